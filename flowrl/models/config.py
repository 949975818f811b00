"""Config dataclasses with a JSON round trip, and the trunk's config."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from flowrl import atomic
from flowrl.errors import InputError

__all__ = ["JsonConfig", "FlowformerConfig"]

C = TypeVar("C", bound="JsonConfig")


def _fits(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits a config field's annotation (int, float, str, bool, tuples, unions,
    nested configs as dicts). Floats must be finite: no config means anything by NaN or infinity."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is dict or origin is dict:
        return tp is Any or isinstance(value, dict)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(v, args[0]) for v in value)
        return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, JsonConfig):
        return isinstance(value, (dict, tp))
    return True  # an annotation this check does not know: the config's own validation decides


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _describe(tp: Any) -> str:
    if tp is float:
        return "a finite number"
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    name = getattr(tp, "__name__", str(tp))
    return {"int": "an integer", "str": "a string", "bool": "true or false", "dict": "an object"}.get(name, f"a {name}")


class JsonConfig:
    """Mixin for dataclass configs: ``to_dict``/``from_dict``, ``to_json``/``from_json``, ``save``/``load``.

    Unknown keys are an error (a typo in a config file must not be silently ignored).
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise InputError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for k, v in data.items():
            if not _fits(v, hints.get(k, Any)):
                raise InputError(f"{cls.__name__}: {k} must be {_describe(hints[k])}, got {v!r}")
            kwargs[k] = tuple(v) if isinstance(v, list) else v
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kwargs and _required(f)]  # type: ignore[arg-type]
        if missing:
            raise InputError(f"{cls.__name__}: missing required field(s) {missing}")
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{cls.__name__}: invalid JSON ({e})") from None
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        atomic.write_text(path, self.to_json() + "\n")

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise InputError(f"{cls.__name__}: cannot read {path}: {e.strerror}") from None
        return cls.from_json(text)


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise InputError(f"FlowformerConfig: {name} {message}")


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
