"""Classifiers for the paper's non-RL domains, as thin wrappers around the one :class:`Flowformer` trunk.

Each wrapper = an input embedding + positions (+ an optional class token) -> trunk -> pooling -> head:

- :class:`SequenceClassifier`: token ids ``[B, L]`` -> logits (Long Range Arena style), with an optional
  two-sequence mode for retrieval (both sides encoded by the same encoder, combined as [u, v, u·v, u−v]).
- :class:`TimeSeriesClassifier`: ``[B, T, C]`` floats -> logits (UEA style), variable lengths via masks.
- :class:`ImageClassifier`: ``[B, C, H, W]`` -> logits through a patch embedding (ViT style).

Switch ``trunk.attention`` between ``"flow"`` and ``"softmax"`` to compare. Example::

    cfg = SequenceClassifierConfig(vocab_size=16, num_classes=10, pad_id=0,
                                   trunk=FlowformerConfig(dim=64, depth=2, heads=4))
    logits = SequenceClassifier(cfg)(ids)  # ids [B, L] (long); positions holding pad_id are ignored
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import Tensor, nn

from flowrl.errors import InputError
from flowrl.layers import LearnedPositionEmbedding, SinusoidalPositionEmbedding
from flowrl.models.config import FlowformerConfig, JsonConfig
from flowrl.models.flowformer import Flowformer

__all__ = [
    "ImageClassifier",
    "ImageClassifierConfig",
    "SequenceClassifier",
    "SequenceClassifierConfig",
    "TimeSeriesClassifier",
    "TimeSeriesClassifierConfig",
]

POSITIONS = ("learned", "sinusoidal", "none")
POOLINGS = ("mean", "cls")


# --- config plumbing shared by every wrapper config (also used by lm.py) ---


def _check(cond: bool, owner: str, name: str, message: str) -> None:
    if not cond:
        raise InputError(f"{owner}: {name} {message}")


def _trunk_config(value: Any, owner: str, *, causal: bool) -> FlowformerConfig:
    """Rebuild a nested trunk config (JSON gives a dict) and check its ``causal`` flag fits the wrapper."""
    if isinstance(value, dict):
        value = FlowformerConfig.from_dict(value)
    if not isinstance(value, FlowformerConfig):
        kind = type(value).__name__
        raise InputError(f"{owner}: trunk must be a FlowformerConfig or a dict of its fields, got {kind}")
    if value.causal != causal:
        raise InputError(
            f"{owner}: trunk.causal is {value.causal}, this model needs causal={causal} "
            f"(pass trunk=FlowformerConfig(..., causal={causal}))"
        )
    return value


def _check_common(cfg: Any, owner: str) -> None:
    """Checks of the fields that several wrapper configs share (positions, max_len, pooling, head_hidden)."""
    if hasattr(cfg, "num_classes"):
        _check(cfg.num_classes >= 2, owner, "num_classes", f"must be >= 2, got {cfg.num_classes}")
    _check(cfg.positions in POSITIONS, owner, "positions", f"must be one of {POSITIONS}, got {cfg.positions!r}")
    if hasattr(cfg, "max_len"):
        _check(cfg.max_len >= 1, owner, "max_len", f"must be >= 1, got {cfg.max_len}")
    if hasattr(cfg, "pooling"):
        _check(cfg.pooling in POOLINGS, owner, "pooling", f"must be one of {POOLINGS}, got {cfg.pooling!r}")
    if hasattr(cfg, "head_hidden"):
        _check(cfg.head_hidden >= 0, owner, "head_hidden", f"must be >= 0 (0: linear), got {cfg.head_hidden}")


@dataclass
class SequenceClassifierConfig(JsonConfig):
    """Token ids -> class (LRA style: ListOps, text, retrieval)."""

    vocab_size: int
    """Number of token ids; valid ids are 0..vocab_size-1 (pad_id included)."""
    num_classes: int
    """Number of output classes."""
    trunk: FlowformerConfig = field(default_factory=FlowformerConfig)
    """The Flowformer trunk (must be non-causal)."""
    pooling: str = "mean"
    """"mean": average over non-padding tokens; "cls": a learned class token prepended, its output used."""
    positions: str = "learned"
    """"learned" (a table of max_len positions), "sinusoidal" (any length) or "none"."""
    max_len: int = 1024
    """Longest sequence (without the class token) for learned positions; ignored otherwise."""
    pad_id: int | None = None
    """Token id that marks padding (masked out of attention and pooling); None: no padding id."""
    pair: bool = False
    """Two-sequence mode (retrieval): forward(ids, ids2) encodes both and classifies [u, v, u·v, u−v]."""
    head_hidden: int = 0
    """Hidden width of an MLP head (Linear-GELU-Linear); 0 = a single linear layer."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.trunk = _trunk_config(self.trunk, owner, causal=False)
        _check(self.vocab_size >= 1, owner, "vocab_size", f"must be >= 1, got {self.vocab_size}")
        _check_common(self, owner)
        if self.pad_id is not None:
            _check(
                0 <= self.pad_id < self.vocab_size,
                owner,
                "pad_id",
                f"={self.pad_id} must be a token id in [0, vocab_size={self.vocab_size})",
            )


@dataclass
class TimeSeriesClassifierConfig(JsonConfig):
    """Multivariate series ``[B, T, C]`` -> class (UEA style)."""

    in_channels: int
    """Number of variables C per time step."""
    num_classes: int
    """Number of output classes."""
    trunk: FlowformerConfig = field(default_factory=FlowformerConfig)
    """The Flowformer trunk (must be non-causal)."""
    pooling: str = "mean"
    """"mean": average over valid steps; "cls": a learned class token prepended, its output used."""
    positions: str = "sinusoidal"
    """"sinusoidal" (any length), "learned" (a table of max_len steps) or "none"."""
    max_len: int = 1024
    """Longest series for learned positions; ignored otherwise."""
    embed_kernel: int = 3
    """Odd width of the Conv1d over time that embeds each step with its neighbours (as the token embedding
    of the Time-Series-Library that Flowformer's UEA runs use); 1 = each step on its own (a linear map)."""
    head_hidden: int = 0
    """Hidden width of an MLP head (Linear-GELU-Linear); 0 = a single linear layer."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.trunk = _trunk_config(self.trunk, owner, causal=False)
        _check(self.in_channels >= 1, owner, "in_channels", f"must be >= 1, got {self.in_channels}")
        _check(
            self.embed_kernel >= 1 and self.embed_kernel % 2 == 1,
            owner,
            "embed_kernel",
            f"must be an odd width >= 1, got {self.embed_kernel}",
        )
        _check_common(self, owner)


@dataclass
class ImageClassifierConfig(JsonConfig):
    """Images ``[B, C, H, W]`` -> class through non-overlapping ``patch_size`` patches (ViT style)."""

    num_classes: int
    """Number of output classes."""
    image_size: int | tuple[int, int] = 32
    """Image height and width (an int for square images); both must be divisible by patch_size."""
    patch_size: int = 4
    """Side of the square patches; each patch becomes one token."""
    in_channels: int = 3
    """Image channels C."""
    trunk: FlowformerConfig = field(default_factory=FlowformerConfig)
    """The Flowformer trunk (must be non-causal)."""
    pooling: str = "mean"
    """"mean": average over patches; "cls": a learned class token prepended, its output used."""
    positions: str = "learned"
    """"learned" (one per patch of image_size), "sinusoidal" (raster order, any size) or "none"."""
    head_hidden: int = 0
    """Hidden width of an MLP head (Linear-GELU-Linear); 0 = a single linear layer."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.trunk = _trunk_config(self.trunk, owner, causal=False)
        size = self.image_size
        if isinstance(size, int):
            size = (size, size)
        _check(
            isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s >= 1 for s in size),
            owner,
            "image_size",
            f"must be a positive int or (height, width), got {self.image_size!r}",
        )
        self.image_size = (int(size[0]), int(size[1]))
        _check(self.patch_size >= 1, owner, "patch_size", f"must be >= 1, got {self.patch_size}")
        h, w = self.image_size
        _check(
            h % self.patch_size == 0 and w % self.patch_size == 0,
            owner,
            "image_size",
            f"{h}x{w} is not divisible by patch_size={self.patch_size}",
        )
        _check(self.in_channels >= 1, owner, "in_channels", f"must be >= 1, got {self.in_channels}")
        _check_common(self, owner)

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per column and per row."""
        h, w = cast("tuple[int, int]", self.image_size)  # __post_init__ makes an int a square
        return h // self.patch_size, w // self.patch_size


# --- shared building blocks ---


def check_token_ids(ids: Tensor, vocab_size: int, owner: str) -> None:
    """Raise a ValueError naming the vocabulary when ``ids`` is not a [B, L] integer tensor in range."""
    if ids.dim() != 2:
        raise ValueError(f"{owner}: token ids have shape {tuple(ids.shape)}, expected [B, L]")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise ValueError(f"{owner}: token ids must be an integer tensor, got {ids.dtype}")
    if ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"{owner}: token id {bad} is outside the vocabulary [0, {vocab_size - 1}] (vocab_size={vocab_size})"
            )


def check_padding_mask(mask: Tensor, shape: tuple[int, int], owner: str, name: str = "padding_mask") -> None:
    if mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{owner}: {name} has shape {tuple(mask.shape)} and dtype {mask.dtype}, "
            f"expected a bool tensor of shape {tuple(shape)} (True = padding)"
        )


def make_positions(kind: str, max_len: int, dim: int) -> nn.Module | None:
    if kind == "learned":
        # Unit scale, like the N(0, 1) token embeddings and the ±1 sinusoids: a 0.02 table (the layer's
        # default, meant for inputs of that scale) leaves the position signal negligible for a long while.
        return LearnedPositionEmbedding(max_len, dim, init_std=1.0)
    if kind == "sinusoidal":
        return SinusoidalPositionEmbedding(dim)
    return None


def make_head(dim: int, hidden: int, num_classes: int) -> nn.Module:
    if hidden == 0:
        return nn.Linear(dim, num_classes)
    return nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, num_classes))


class _Encoder(nn.Module):
    """Embedded tokens ``[B, L, dim]`` (+ padding mask) -> positions, class token, trunk, pool -> [B, dim].

    ``max_len`` counts tokens without the class token; with learned positions longer inputs are an error.
    """

    def __init__(self, config: Any, max_len: int, owner: str):
        super().__init__()
        self.owner, self.max_len, self.positions_kind = owner, max_len, config.positions
        dim, cls = config.trunk.dim, config.pooling == "cls"
        self.positions = make_positions(config.positions, max_len + int(cls), dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if cls else None
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        self.trunk = Flowformer(config.trunk)

    def forward(self, x: Tensor, padding_mask: Tensor | None) -> Tensor:
        B, L, _ = x.shape
        if self.positions_kind == "learned" and L > self.max_len:
            raise ValueError(
                f"{self.owner}: input of length {L} exceeds max_len={self.max_len}, the size of the learned "
                f"position table; use a longer max_len or positions='sinusoidal'"
            )
        if padding_mask is not None and bool(padding_mask.all(dim=1).any()):
            rows = padding_mask.all(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"{self.owner}: batch row(s) {rows[:8]} are all padding (no token to classify)")
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(B, 1, -1).to(x.dtype), x], dim=1)
            if padding_mask is not None:
                padding_mask = torch.cat([padding_mask.new_zeros(B, 1), padding_mask], dim=1)
        if self.positions is not None:
            x = x + self.positions(torch.arange(x.shape[1], device=x.device)).to(x.dtype)
        h = self.trunk(x, padding_mask=padding_mask)  # (B, L', dim)
        if self.cls_token is not None:
            return h[:, 0]
        if padding_mask is None:
            return h.mean(dim=1)
        valid = (~padding_mask).to(h.dtype)[..., None]
        return (h * valid).sum(dim=1) / valid.sum(dim=1)


# --- the wrappers ---


class SequenceClassifier(nn.Module):
    """Token ids ``[B, L]`` -> logits ``[B, num_classes]``.

    Padding comes from ``config.pad_id`` or an explicit ``padding_mask`` (bool, True = pad; it takes
    precedence over pad_id); padded tokens take no part in attention or pooling. In pair mode
    (``config.pair``) ``forward(ids, ids2)`` encodes both sequences with the shared encoder and
    classifies ``[u, v, u·v, u−v]`` of the pooled encodings (the LRA retrieval head).
    """

    config_class = SequenceClassifierConfig

    def __init__(self, config: SequenceClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.trunk.dim)
        self.encoder = _Encoder(c, c.max_len, "SequenceClassifier")
        self.head = make_head(c.trunk.dim * (4 if c.pair else 1), c.head_hidden, c.num_classes)

    def encode(self, ids: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """ids [B, L] -> pooled encoding [B, dim]."""
        c = self.config
        check_token_ids(ids, c.vocab_size, "SequenceClassifier")
        if padding_mask is not None:
            check_padding_mask(padding_mask, (ids.shape[0], ids.shape[1]), "SequenceClassifier")
        elif c.pad_id is not None:
            padding_mask = ids == c.pad_id
        return self.encoder(self.embed(ids), padding_mask)

    def forward(
        self,
        ids: Tensor,
        ids2: Tensor | None = None,
        *,
        padding_mask: Tensor | None = None,
        padding_mask2: Tensor | None = None,
    ) -> Tensor:
        """ids [B, L] (and ids2 [B, L2] in pair mode) -> logits [B, num_classes]."""
        if self.config.pair != (ids2 is not None):
            need = "needs a second sequence ids2" if self.config.pair else "takes one sequence (pair=False)"
            raise ValueError(f"SequenceClassifier: this model {need}")
        u = self.encode(ids, padding_mask)
        if ids2 is None:
            return self.head(u)
        if ids2.dim() != 2 or ids2.shape[0] != ids.shape[0]:
            raise ValueError(f"SequenceClassifier: ids2 has shape {tuple(ids2.shape)}, expected [{ids.shape[0]}, L2]")
        v = self.encode(ids2, padding_mask2)
        return self.head(torch.cat([u, v, u * v, u - v], dim=-1))


class TimeSeriesClassifier(nn.Module):
    """Series ``[B, T, C]`` -> logits ``[B, num_classes]``; a Conv1d over time embeds the steps.

    Variable lengths: pass ``lengths`` ([B] ints, series left-aligned) or ``padding_mask`` ([B, T] bool,
    True = pad). Padded steps are zeroed before the embedding, so NaN padding (as in UEA files) is fine,
    and the convolution sees the same zeros past a series' end whether it is padded or not.
    """

    config_class = TimeSeriesClassifierConfig

    def __init__(self, config: TimeSeriesClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Conv1d(c.in_channels, c.trunk.dim, c.embed_kernel, padding=c.embed_kernel // 2)
        self.encoder = _Encoder(c, c.max_len, "TimeSeriesClassifier")
        self.head = make_head(c.trunk.dim, c.head_hidden, c.num_classes)

    def forward(self, x: Tensor, *, lengths: Tensor | None = None, padding_mask: Tensor | None = None) -> Tensor:
        """x [B, T, C] float; lengths [B] int or padding_mask [B, T] bool -> logits [B, num_classes]."""
        owner, C = "TimeSeriesClassifier", self.config.in_channels
        if x.dim() != 3 or not x.dtype.is_floating_point:
            raise ValueError(f"{owner}: x has shape {tuple(x.shape)} and dtype {x.dtype}, expected a float [B, T, {C}]")
        if x.shape[-1] != C:
            raise ValueError(f"{owner}: x has {x.shape[-1]} channels, expected in_channels={C} ([B, T, C])")
        B, T, _ = x.shape
        if lengths is not None and padding_mask is not None:
            raise ValueError(f"{owner}: pass lengths or padding_mask, not both")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=x.device)
            if lengths.shape != (B,) or lengths.dtype.is_floating_point:
                raise ValueError(f"{owner}: lengths has shape {tuple(lengths.shape)}, expected [{B}] ints")
            if B and (int(lengths.min()) < 1 or int(lengths.max()) > T):
                raise ValueError(f"{owner}: lengths must be in [1, T={T}], got {lengths.tolist()[:8]}")
            padding_mask = torch.arange(T, device=x.device)[None, :] >= lengths[:, None]
        if padding_mask is not None:
            check_padding_mask(padding_mask, (B, T), owner)
            x = x.masked_fill(padding_mask[..., None], 0.0)
        tokens = self.embed(x.transpose(1, 2)).transpose(1, 2)  # (B, T, dim)
        return self.head(self.encoder(tokens, padding_mask))


class ImageClassifier(nn.Module):
    """Images ``[B, C, H, W]`` -> logits ``[B, num_classes]``; patches embedded by a strided Conv2d."""

    config_class = ImageClassifierConfig

    def __init__(self, config: ImageClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        p = c.patch_size
        self.patch_embed = nn.Conv2d(c.in_channels, c.trunk.dim, kernel_size=p, stride=p)
        gh, gw = c.grid
        self.encoder = _Encoder(c, gh * gw, "ImageClassifier")
        self.head = make_head(c.trunk.dim, c.head_hidden, c.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] float -> logits [B, num_classes]."""
        c, owner = self.config, "ImageClassifier"
        if x.dim() != 4 or not x.dtype.is_floating_point:
            raise ValueError(
                f"{owner}: x has shape {tuple(x.shape)} and dtype {x.dtype}, "
                f"expected a float [B, {c.in_channels}, H, W]"
            )
        if x.shape[1] != c.in_channels:
            raise ValueError(
                f"{owner}: x has {x.shape[1]} channels, expected in_channels={c.in_channels} ([B, C, H, W])"
            )
        H, W = x.shape[-2:]
        p = c.patch_size
        if H % p or W % p:
            raise ValueError(f"{owner}: image size {H}x{W} is not divisible by patch_size={p}")
        size = cast("tuple[int, int]", c.image_size)
        if c.positions == "learned" and (H, W) != size:
            raise ValueError(
                f"{owner}: image size {H}x{W} differs from image_size={size[0]}x{size[1]} "
                "that the learned position table was made for"
            )
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, H/p · W/p, dim), raster order
        return self.head(self.encoder(tokens, None))
