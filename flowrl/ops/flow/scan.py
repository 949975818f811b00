"""Causal Flow-Attention as plain autograd through its scans (steps 1-4 of :mod:`flowrl.ops.flow`).

The path for gradients that flow into or out of a carried :class:`FlowState` (the fast paths treat a state
as a constant), and :func:`causal_linear_attention`, the chunked unnormalised linear attention of step 4.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowrl.ops.flow.chunk import DEFAULT_CHUNK
from flowrl.ops.flow.state import FlowState

__all__ = ["causal_linear_attention", "causal_scan", "rowdot"]


def causal_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, kv: Tensor | None = None, *, chunk: int = DEFAULT_CHUNK
) -> tuple[Tensor, Tensor | None]:
    """Unnormalised causal linear attention y_t = q_t · Σ_{j≤t} k_j v_jᵀ, chunked.

    q, k: [B, H, L, D]; v: [B, H, L, M]; kv: optional [B, H, D, M] carried from earlier tokens.
    Returns y [B, H, L, M] and, when ``kv`` is given, the updated [B, H, D, M] state (else None).
    Within a chunk the masked q·kᵀ product is used; across chunks a D×M state is carried, so memory is
    O(L·(D + M + chunk) + (L/chunk)·D·M) instead of the O(L·D·M) of a cumulative sum over k vᵀ.
    """
    B, H, L, D = q.shape
    M = v.shape[-1]
    if L <= chunk:
        y = torch.tril(q @ k.transpose(-1, -2)) @ v
        if kv is None:
            return y, None
        return y + q @ kv.to(q.dtype), kv + (k.transpose(-1, -2) @ v).to(kv.dtype)
    pad = (-L) % chunk
    if pad:
        q, k, v = (torch.nn.functional.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
    N = (L + pad) // chunk
    qc = q.reshape(B, H, N, chunk, D)
    kc = k.reshape(B, H, N, chunk, D)
    vc = v.reshape(B, H, N, chunk, M)
    y = torch.tril(qc @ kc.transpose(-1, -2)) @ vc  # (B, H, N, C, M) within-chunk part
    kv_chunk = kc.transpose(-1, -2) @ vc  # (B, H, N, D, M)
    # state entering chunk n = Σ_{m<n} kv_chunk[m] (+ carried state)
    prefix = torch.cumsum(kv_chunk[:, :, :-1], dim=2)
    prefix = torch.cat([torch.zeros_like(kv_chunk[:, :, :1]), prefix], dim=2)
    if kv is not None:
        prefix = prefix + kv.to(prefix.dtype)[:, :, None]
    y = y + qc @ prefix
    y = y.reshape(B, H, N * chunk, M)[:, :, :L]
    if kv is None:
        return y, None
    return y, (prefix[:, :, -1] + kv_chunk[:, :, -1]).to(kv.dtype)


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_d a[..., d]·b[..., d] without a matmul, so autocast never lowers the normalisers to bf16."""
    return (a * b).sum(-1)


def causal_scan(q, k, v, eps, clamp, state: FlowState | None, return_state: bool, chunk: int, products=None):
    """Steps 1-4 of :mod:`flowrl.ops.flow` on q = σ(Q), k = σ(K) as autograd-traced torch operators. ``products``
    computes step 4 (default :func:`causal_linear_attention`; the Triton path passes its kernels)."""
    products = products or causal_linear_attention
    B, H, L, D = q.shape
    M = v.shape[-1]
    if state is None and return_state:
        state = FlowState.zeros(B, H, D, M, dtype=q.dtype, device=q.device)
    t0 = state.t.to(q.dtype).view(B, 1, 1) if state is not None else 0.0
    t = t0 + torch.arange(1, L + 1, device=q.device, dtype=q.dtype).view(1, 1, L)  # (B|1, 1, L)

    k_sum = torch.cumsum(k, dim=2)
    q_sum = torch.cumsum(q, dim=2)
    if state is not None:
        k_sum = k_sum + state.k_sum[:, :, None].to(q.dtype)
        q_sum = q_sum + state.q_sum[:, :, None].to(q.dtype)
    incoming = t / rowdot(q + eps, k_sum + eps)  # I_t  (B, H, L)
    outgoing = t / rowdot(k + eps, q_sum + eps)  # O_t

    sink_sum = torch.cumsum(k * outgoing[..., None], dim=2)  # P_t
    source_sum = torch.cumsum(q * incoming[..., None], dim=2)  # R_t
    if state is not None:
        sink_sum = sink_sum + state.sink_sum[:, :, None].to(q.dtype)
        source_sum = source_sum + state.source_sum[:, :, None].to(q.dtype)
    conserved_sink = rowdot(q + eps, sink_sum + eps) / t
    conserved_source = torch.clamp(rowdot(k + eps, source_sum + eps) / t, -clamp, clamp)

    e = torch.exp(conserved_source)
    z = torch.cumsum(e, dim=-1)
    if state is not None:
        z = z + state.z[:, :, None].to(q.dtype)
    competition = t * e / z  # C_t
    allocation = torch.sigmoid(conserved_sink)  # A_t

    q_norm = q * (incoming / t)[..., None]  # q_t / ((q_t+ε)·(Kc_t+ε))
    v_comp = v * competition[..., None]
    y, kv = products(q_norm, k, v_comp, state.kv.to(q.dtype) if state is not None else None, chunk=chunk)
    y = y * allocation[..., None]
    new_state = None
    if return_state:
        assert state is not None  # made above when none was passed
        new_state = FlowState(
            state.t + L,
            k_sum[:, :, -1],
            q_sum[:, :, -1],
            sink_sum[:, :, -1],
            source_sum[:, :, -1],
            z[:, :, -1],
            kv,
        )
    return y, new_state
