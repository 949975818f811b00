"""Dropout with a cheap random mask on CPU.

``torch.nn.Dropout`` on CPU draws one Bernoulli sample per element (``bernoulli_``): on a
Decision-Transformer batch ([64, 60, 128], 7 dropouts per update) that was 13-17% of a training step on
the 2-core development machine. Here the mask comes from raw random bits instead: 64-bit integers from
torch's default generator, viewed as four 16-bit words each, and an element is kept when its word is at
least ``round(p * 65536)`` steps above the minimum -- the drop probability is ``p`` rounded to a multiple
of 1/65536 (0.1 -> 0.100006). About 5x faster than ``bernoulli_`` there; other devices use
``F.dropout`` (already fused). The mask is drawn from the default generator, so ``torch.manual_seed``
makes it reproducible and saving torch's RNG state (as the trainer does) makes resumes exact.

Example::

    drop = Dropout(0.1)
    y = drop(x)              # training mode: ~10% zeros, the rest scaled by 1/0.9
    drop.eval(); drop(x)     # identity
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    return x * keep_mask(x.shape, p) * (1.0 / (1.0 - p))


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
