"""Which precision each part of the op runs in: normalisers in float32 (or float64), value products in the
autocast or 16-bit input dtype."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

__all__ = ["value_dtype", "no_autocast", "work_dtype"]


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of the scans and normalisers: float64 for float64 inputs, else float32 (the sums grow
    with L, so 16-bit inputs are never summed in 16 bits)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def value_dtype(q: Tensor, work: torch.dtype) -> torch.dtype | None:
    """Precision of the causal value products q′·(k v′ᵀ) and their gradients: the autocast dtype under
    autocast, else a 16-bit input's own dtype, else None (= `work`). Normalisers never use it."""
    if work == torch.float64:
        return None
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return q.dtype if q.dtype in (torch.bfloat16, torch.float16) else None


def no_autocast(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()
