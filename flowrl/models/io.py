"""Save and load a domain model: a folder with ``model.pt`` (the state dict) and ``config.json``.

``model.pt`` is a plain state dict (``torch.load(path, weights_only=True)`` reads it);
``config.json`` is ``{"format": 1, "model": "<class name>", "config": {...the config's fields...}}``.
Each file is written to a temporary file in the same folder and renamed into place, so a crash never
leaves a half-written file. Example::

    save_model(model, "runs/listops")
    model = load_model("runs/listops")  # the class comes from config.json
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from flowrl import atomic
from flowrl.errors import InputError, MissingInputError
from flowrl.models.classifiers import ImageClassifier, SequenceClassifier, TimeSeriesClassifier
from flowrl.models.lm import CausalLM

__all__ = ["MODELS", "save_model", "load_model"]

FORMAT = 1
WEIGHTS = "model.pt"
CONFIG = "config.json"
MODELS: dict[str, type[nn.Module]] = {
    cls.__name__: cls for cls in (SequenceClassifier, TimeSeriesClassifier, ImageClassifier, CausalLM)
}


def _model_name(model: nn.Module) -> str:
    name = type(model).__name__
    if MODELS.get(name) is not type(model):
        raise ValueError(f"save_model: {name} is not one of the domain models {sorted(MODELS)}")
    return name


def save_model(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model.pt`` and ``config.json`` of a domain model into ``directory`` (created if missing)."""
    name = _model_name(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(directory / WEIGHTS) as tmp:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    config: Any = model.config  # every domain model keeps its JsonConfig here
    meta = {"format": FORMAT, "model": name, "config": config.to_dict()}
    atomic.write_json(directory / CONFIG, meta, sort_keys=True)
    return directory


def load_model(
    directory: str | os.PathLike, model_cls: type[nn.Module] | None = None, *, map_location="cpu"
) -> nn.Module:
    """Rebuild the model saved in ``directory`` (in eval mode). ``model_cls``, if given, must match."""
    directory = Path(directory)
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise MissingInputError(
                f"load_model: {directory / name} not found (a save_model folder holds {CONFIG} and {WEIGHTS})"
            )
    try:
        meta = json.loads((directory / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"load_model: {directory / CONFIG} is not valid JSON ({e})") from None
    if not isinstance(meta, dict) or set(meta) != {"format", "model", "config"}:
        raise InputError(f"load_model: {directory / CONFIG} lacks the keys format, model, config")
    if meta["format"] != FORMAT:
        raise InputError(f"load_model: {directory / CONFIG} has format {meta['format']!r}, expected {FORMAT}")
    cls = MODELS.get(meta["model"])
    if cls is None:
        raise InputError(
            f"load_model: unknown model {meta['model']!r} in {directory / CONFIG}; known: {sorted(MODELS)}"
        )
    if model_cls is not None and model_cls is not cls:
        raise InputError(f"load_model: {directory} holds a {cls.__name__}, not a {model_cls.__name__}")
    model = cls(cls.config_class.from_dict(meta["config"]))  # type: ignore[attr-defined]  # see MODELS
    state = torch.load(directory / WEIGHTS, map_location=map_location, weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"load_model: {directory / WEIGHTS} does not fit its config.json: {e}") from None
    return model.eval()
