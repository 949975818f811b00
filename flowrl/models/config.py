"""Config dataclasses with a JSON round trip, and the trunk's config."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["JsonConfig", "FlowformerConfig", "atomic_write_text"]

C = TypeVar("C", bound="JsonConfig")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class JsonConfig:
    """Mixin for dataclass configs: ``to_dict``/``from_dict``, ``to_json``/``from_json``, ``save``/``load``.

    Unknown keys are an error (a typo in a config file must not be silently ignored).
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(names)}")
        kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{cls.__name__}: invalid JSON ({e})") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise ValueError(f"{cls.__name__}: cannot read {path}: {e.strerror}") from None
        return cls.from_json(text)


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise ValueError(f"FlowformerConfig: {name} {message}")


@dataclass
class FlowformerConfig(JsonConfig):
    """The Flowformer trunk: ``depth`` pre-norm blocks of width ``dim``."""

    dim: int = 128
    """Model width (token embedding size)."""
    depth: int = 3
    """Number of transformer blocks."""
    heads: int = 4
    """Attention heads; dim must be divisible by heads."""
    attention: str = "flow"
    """Attention kind: "flow" (Flow-Attention, linear in length) or "softmax" (the baseline)."""
    causal: bool = False
    """Causal (autoregressive) attention: token t sees tokens <= t."""
    dropout: float = 0.1
    """Dropout after attention and MLP outputs."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of dim."""
    activation: str = "gelu"
    """MLP activation: "gelu" or "relu"."""
    clamp: float = 1.0
    """Flow attention: bound of the conserved source flow (reference core 1.0, its RL code 10.0)."""
    eps: float = 1e-6
    """Flow attention: epsilon added inside the flow normalisers."""
    chunk: int = 64
    """Flow attention, causal: chunk length of the chunked scan (speed/memory only)."""
    norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    final_norm: bool = True
    """Apply a LayerNorm after the last block."""

    def __post_init__(self) -> None:
        _check(self.dim >= 1, "dim", f"must be >= 1, got {self.dim}")
        _check(self.depth >= 1, "depth", f"must be >= 1, got {self.depth}")
        _check(
            self.heads >= 1 and self.dim % self.heads == 0,
            "heads",
            f"must divide dim (got heads={self.heads}, dim={self.dim})",
        )
        _check(
            self.attention in ("flow", "softmax"), "attention", f"must be 'flow' or 'softmax', got {self.attention!r}"
        )
        _check(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")
        _check(self.mlp_ratio > 0, "mlp_ratio", f"must be > 0, got {self.mlp_ratio}")
        _check(self.activation in ("gelu", "relu"), "activation", f"must be 'gelu' or 'relu', got {self.activation!r}")
        _check(0.0 < self.clamp <= 50.0, "clamp", f"must be in (0, 50], got {self.clamp}")
        _check(self.eps >= 0, "eps", f"must be >= 0, got {self.eps}")
        _check(self.chunk >= 1, "chunk", f"must be >= 1, got {self.chunk}")
