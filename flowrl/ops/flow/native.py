"""The CPU implementation of the causal flow op: ``native_chunk.cpp`` through :mod:`flowrl.ops.native`.

One task per (batch row, head), split across torch's thread count; inputs in float32, float64 or bfloat16
with any strides whose last dimension is contiguous (the views of a fused q/k/v projection are read in
place); the maths in float64 for float64 inputs, else float32 (bfloat16 is widened on load and rounded to
nearest even on store). Outputs and gradients are new contiguous tensors in the inputs' dtype.

The native kernel computes the value products in float32 also under bfloat16 autocast (the torch
implementation runs them in bfloat16 there): its bfloat16 results are closer to the float64 reference.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import torch
from torch import Tensor

from flowrl.ops import native

__all__ = ["unsupported", "causal_forward", "causal_backward"]

_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.bfloat16: "bf16"}


def unsupported(op: str, q: Tensor, state: Sequence[Tensor] = (), **_) -> str | None:
    """Why the native kernel cannot run ``op`` on these inputs, or None when it can."""
    if op != "causal":
        return f"no native kernel for the {op} op"
    if q.device.type != "cpu":
        return f"tensors on {q.device}"
    if q.dtype not in _SUFFIX:
        return f"dtype {q.dtype}"
    if len(state):
        return "a carried state"
    if native.library() is None:
        return f"native kernels {native.status()}"
    return None


def _kernel(kind: str, dtype: torch.dtype):
    return getattr(native.library(), f"flow_causal_{kind}_{_SUFFIX[dtype]}")


def _rows(x: Tensor) -> Tensor:
    """x itself when its last dimension is contiguous (any other strides are passed to the kernel)."""
    return x if x.stride(-1) == 1 or x.shape[-1] == 1 else x.contiguous()


def _strides(*xs: Tensor) -> ctypes.Array:
    values = [s if n > 1 else 0 for x in xs for n, s in zip(x.shape[:3], x.stride()[:3])]
    return (ctypes.c_int64 * len(values))(*values)


def causal_forward(q: Tensor, k: Tensor, v: Tensor, eps: float, clamp: float, chunk: int) -> Tensor:
    """y [B, H, L, M] of causal flow attention on raw q, k [B, H, L, D] and v [B, H, L, M]."""
    q, k, v = (_rows(x) for x in (q, k, v))
    B, H, L, D = q.shape
    M = v.shape[-1]
    y = torch.empty((B, H, L, M), dtype=q.dtype)
    if y.numel():
        code = _kernel("forward", q.dtype)(
            q.data_ptr(), k.data_ptr(), v.data_ptr(), _strides(q, k, v), B, H, L, D, M,
            chunk, eps, clamp, y.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        native.check(code, "flow attention (native forward)")
    return y


def causal_backward(
    gy: Tensor, q: Tensor, k: Tensor, v: Tensor, eps: float, clamp: float, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(gq, gk, gv) for the output gradient gy [B, H, L, M]; recomputes the forward's intermediates."""
    gy, q, k, v = (_rows(x) for x in (gy.to(q.dtype), q, k, v))
    B, H, L, D = q.shape
    M = v.shape[-1]
    gq, gk, gv = (torch.empty(x.shape, dtype=q.dtype) for x in (q, k, v))
    if gq.numel() and gv.numel():
        code = _kernel("backward", q.dtype)(
            gy.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), _strides(gy, q, k, v), B, H, L, D, M,
            chunk, eps, clamp, gq.data_ptr(), gk.data_ptr(), gv.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        native.check(code, "flow attention (native backward)")
    else:
        gq.zero_(), gk.zero_(), gv.zero_()
    return gq, gk, gv
