"""Dropout with a cheap random mask on CPU.

``torch.nn.Dropout`` on CPU draws one Bernoulli sample per element (``bernoulli_``): on a
Decision-Transformer batch ([64, 60, 128], 7 dropouts per update) that was 13-17% of a training step on
the 2-core development machine. Two cheaper paths here, both keeping an element when a uniform 16-bit word
is at least ``round(p * 65536)`` (the drop probability is ``p`` rounded to a multiple of 1/65536: 0.1 ->
0.100006):

- with flowrl's native kernels (:mod:`flowrl.ops.native`, float32/float64/bfloat16 tensors): one pass
  ``y = x * keep * scale`` whose mask comes from a counter-based hash (splitmix64) of a seed and the element
  index; the backward pass regenerates the mask from the seed (nothing stored). One seed per call is drawn
  from torch's default generator.
- otherwise: 64-bit integers from torch's default generator, viewed as four 16-bit words each, compared and
  multiplied in torch operators.

Either way ``torch.manual_seed`` makes masks reproducible and saving torch's RNG state (as the trainer does)
makes resumes exact. Other devices, and graphs traced by ``torch.compile``, use ``F.dropout`` (already fused).

Seed-batched models (:mod:`flowrl.agents.stacking`) run S independent models as one, their activations
stacked seed-major along the first dimension ([S·B, ...]). ``generators`` (one ``torch.Generator`` per seed)
gives each seed's slice its own random stream: slice s gets exactly the mask that ``dropout`` of that slice
alone would draw from torch's default generator in the state of ``generators[s]``, so seed s of a batched
run drops what seed s trained alone drops.

Example::

    drop = Dropout(0.1)
    y = drop(x)              # training mode: ~10% zeros, the rest scaled by 1/0.9
    drop.eval(); drop(x)     # identity
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from flowrl.ops import native

__all__ = ["Dropout", "dropout", "keep_mask"]

_WORD = 1 << 16


def keep_mask(
    shape: torch.Size | tuple[int, ...], p: float, *, device=None, generator: torch.Generator | None = None
) -> Tensor:
    """A bool tensor of ``shape``, each element True with probability ``1 - p`` (p in steps of 1/65536).

    The random words come from ``generator`` (default: torch's default generator of ``device``).
    """
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), (1 << 63) - 1, generator=generator)  # whole int64 range: four uniform 16-bit words
    threshold = -(1 << 15) + round(p * _WORD)
    return words.view(torch.int16)[:n].view(shape) >= threshold


def dropout(
    x: Tensor, p: float, training: bool = True, *, generators: Sequence[torch.Generator] | None = None
) -> Tensor:
    """Functional form of :class:`Dropout` (the same as ``F.dropout`` in distribution).

    ``generators``: S generators on ``x``'s device for a seed-batched ``x`` of [S·B, ...] (see the module
    doc); ``x.shape[0]`` must be a multiple of S. None: one stream, torch's default generator.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    if generators is not None and x.shape[0] % len(generators):
        raise ValueError(f"dropout: {len(generators)} generators do not split a first dimension of {x.shape[0]}")
    if x.device.type != "cpu" or torch.compiler.is_compiling():  # compiled graphs: a traceable fused dropout
        if generators is None:
            return F.dropout(x, p, True)
        parts = x.chunk(len(generators))
        return torch.cat([_with_default_generator(g, F.dropout, xs, p, True) for g, xs in zip(generators, parts)])
    kernel = _native_kernel(x.dtype)
    if kernel is not None:
        seeds = tuple(_draw_seed(g) for g in generators or (None,))
        return _NativeDropout.apply(x, kernel, seeds, round(p * _WORD), 1.0 / (1.0 - p))
    scale = 1.0 / (1.0 - p)
    if generators is None:
        return x * keep_mask(x.shape, p) * scale
    parts = x.chunk(len(generators))
    return torch.cat([xs * keep_mask(xs.shape, p, generator=g) * scale for g, xs in zip(generators, parts)])


def _draw_seed(generator: torch.Generator | None) -> int:
    """One uniform 64-bit kernel seed from ``generator`` (None: torch's default generator)."""
    return int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64, generator=generator)) & ((1 << 64) - 1)


def _with_default_generator(generator: torch.Generator, fn, *args):
    """``fn(*args)`` with the default generator of ``generator``'s device in ``generator``'s state; afterwards
    ``generator`` holds the advanced state and the default generator its own (for ops such as ``F.dropout``
    that take no generator argument)."""
    dev = generator.device
    default = torch.cuda.default_generators[dev.index or 0] if dev.type == "cuda" else torch.default_generator
    saved = default.get_state()
    default.set_state(generator.get_state())
    try:
        out = fn(*args)
        generator.set_state(default.get_state())
    finally:
        default.set_state(saved)
    return out


_KERNELS = {torch.float32: "dropout_f32", torch.float64: "dropout_f64", torch.bfloat16: "dropout_bf16"}


def _native_kernel(dtype: torch.dtype):
    name = _KERNELS.get(dtype)
    if name is None:
        return None
    lib = native.library()
    return None if lib is None else getattr(lib, name)


class _NativeDropout(torch.autograd.Function):
    """y = x · keep · scale in one native pass per seed slice of x (one slice: the whole tensor); the backward
    pass applies the same masks (same seeds) to the grad."""

    @staticmethod
    def forward(ctx, x, kernel, seeds, threshold, scale):
        ctx.args = (kernel, seeds, threshold, scale)
        return _apply(kernel, x, seeds, threshold, scale)

    @staticmethod
    @once_differentiable  # the backward itself has no gradient: double backward raises instead of being wrong
    def backward(ctx, grad):
        kernel, seeds, threshold, scale = ctx.args
        return _apply(kernel, grad, seeds, threshold, scale), None, None, None, None


def _apply(kernel, x: Tensor, seeds: tuple[int, ...], threshold: int, scale: float) -> Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    n = x.numel() // len(seeds)  # each slice is hashed from element 0, as if it were a tensor of its own
    step = n * x.element_size()
    xp, yp = x.data_ptr(), y.data_ptr()
    for i, seed in enumerate(seeds):
        native.check(kernel(xp + i * step, yp + i * step, n, seed, threshold, scale), "dropout")
    return y


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (no parameters, so state dicts are unchanged).

    ``generators`` (an attribute, None by default; not saved): one generator per seed of a seed-batched model,
    see :func:`dropout`.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)
        self.generators: Sequence[torch.Generator] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training, generators=self.generators)

    def extra_repr(self) -> str:
        return f"p={self.p}"
