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

Example::

    drop = Dropout(0.1)
    y = drop(x)              # training mode: ~10% zeros, the rest scaled by 1/0.9
    drop.eval(); drop(x)     # identity
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from flowrl.ops import native

__all__ = ["Dropout", "dropout", "keep_mask"]

_WORD = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, *, device=None) -> Tensor:
    """A bool tensor of ``shape``, each element True with probability ``1 - p`` (p in steps of 1/65536)."""
    n = 1
    for s in shape:
        n *= int(s)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), (1 << 63) - 1)  # the whole int64 range: all four 16-bit words are uniform
    threshold = -(1 << 15) + round(p * _WORD)
    return words.view(torch.int16)[:n].view(shape) >= threshold


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Functional form of :class:`Dropout` (the same as ``F.dropout`` in distribution)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or torch.compiler.is_compiling():  # compiled graphs: a traceable fused dropout
        return F.dropout(x, p, True)
    kernel = _native_kernel(x.dtype)
    if kernel is not None:
        seed = int(torch.randint(-(1 << 63), (1 << 63) - 1, (), dtype=torch.int64)) & ((1 << 64) - 1)
        return _NativeDropout.apply(x, kernel, seed, round(p * _WORD), 1.0 / (1.0 - p))
    return x * keep_mask(x.shape, p) * (1.0 / (1.0 - p))


_KERNELS = {torch.float32: "dropout_f32", torch.float64: "dropout_f64", torch.bfloat16: "dropout_bf16"}


def _native_kernel(dtype: torch.dtype):
    name = _KERNELS.get(dtype)
    if name is None:
        return None
    lib = native.library()
    return None if lib is None else getattr(lib, name)


class _NativeDropout(torch.autograd.Function):
    """y = x · keep · scale in one native pass; the backward pass applies the same mask (same seed) to the grad."""

    @staticmethod
    def forward(ctx, x, kernel, seed, threshold, scale):
        ctx.args = (kernel, seed, threshold, scale)
        return _apply(kernel, x, seed, threshold, scale)

    @staticmethod
    @once_differentiable  # the backward itself has no gradient: double backward raises instead of being wrong
    def backward(ctx, grad):
        kernel, seed, threshold, scale = ctx.args
        return _apply(kernel, grad, seed, threshold, scale), None, None, None, None


def _apply(kernel, x: Tensor, seed: int, threshold: int, scale: float) -> Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    native.check(kernel(x.data_ptr(), y.data_ptr(), x.numel(), seed, threshold, scale), "dropout")
    return y


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (no parameters, so state dicts are unchanged)."""

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"
