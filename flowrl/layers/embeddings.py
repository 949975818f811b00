"""Position embeddings: learned (a table with a hard length limit) and sinusoidal (any length)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["LearnedPositionEmbedding", "SinusoidalPositionEmbedding"]


class LearnedPositionEmbedding(nn.Module):
    """A learned table of ``max_len`` positions: positions [*] (int) -> [*, dim].

    ``init_std``: 0.02 suits token embeddings of the same scale (GPT-2); use ~1 next to N(0, 1) embeddings.
    """

    def __init__(self, max_len: int, dim: int, *, init_std: float = 0.02):
        super().__init__()
        if max_len < 1:
            raise ValueError(f"LearnedPositionEmbedding: max_len must be >= 1, got {max_len}")
        self.max_len = max_len
        self.table = nn.Embedding(max_len, dim)
        nn.init.normal_(self.table.weight, std=init_std)

    def forward(self, positions: Tensor) -> Tensor:
        if positions.numel() and (int(positions.max()) >= self.max_len or int(positions.min()) < 0):
            raise ValueError(
                f"LearnedPositionEmbedding: position {int(positions.max())} is outside the learned table "
                f"of {self.max_len} positions (0..{self.max_len - 1}); use a shorter sequence or a larger max_len"
            )
        return self.table(positions)


class SinusoidalPositionEmbedding(nn.Module):
    """Fixed sin/cos features (Vaswani et al. 2017): positions [*] -> [*, dim]; no length limit."""

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        half = dim // 2
        freqs = torch.exp(-math.log(base) * torch.arange(half, dtype=torch.float32) / max(half, 1))
        self.dim = dim
        self.freqs: Tensor
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        angles = positions.to(self.freqs.dtype)[..., None] * self.freqs
        out = torch.cat([angles.sin(), angles.cos()], dim=-1)
        if self.dim % 2:
            out = torch.nn.functional.pad(out, (0, 1))
        return out
