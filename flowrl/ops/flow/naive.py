"""Slow, obviously-correct references for the ops in :mod:`flowrl.ops` (tests and benchmarks only).

Each function writes the paper's equations with explicit sums or full matrices, one batch row at a time
where masks make rows differ. Nothing here is chunked, carried or fused.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["flow_attention_naive", "flow_attention_causal_materialized"]


def _noncausal_one(q: Tensor, k: Tensor, v: Tensor, eps: float, clamp: float) -> Tensor:
    """One batch row, all heads: q [H, L, D] (already σ), k [H, S, D], v [H, S, M]."""
    L, S = q.shape[1], k.shape[1]
    k_total = k.sum(dim=1)  # Σ_j k_j                      (H, D)
    q_total = q.sum(dim=1)  # Σ_i q_i                      (H, D)
    incoming = 1.0 / torch.einsum("hld,hd->hl", q + eps, k_total + eps)  # I_i
    outgoing = 1.0 / torch.einsum("hsd,hd->hs", k + eps, q_total + eps)  # O_j
    conserved_sink = torch.einsum("hld,hd->hl", q + eps, torch.einsum("hs,hsd->hd", outgoing, k) + eps)
    conserved_source = torch.einsum("hsd,hd->hs", k + eps, torch.einsum("hl,hld->hd", incoming, q) + eps)
    conserved_source = conserved_source.clamp(-clamp, clamp)
    allocation = torch.sigmoid(conserved_sink * L / S)
    competition = torch.softmax(conserved_source, dim=-1) * S
    # full attention matrix of the normalised queries against keys
    attn = torch.einsum("hld,hsd->hls", q * incoming[..., None], k)
    return torch.einsum("hls,hsm->hlm", attn, v * competition[..., None]) * allocation[..., None]


def _causal_all(q: Tensor, k: Tensor, v: Tensor, eps: float, clamp: float) -> Tensor:
    """Causal flow attention with explicit lower-triangular matrices; q, k already σ."""
    L = q.shape[2]
    tril = torch.tril(torch.ones(L, L, dtype=q.dtype, device=q.device))  # tril[t, j] = 1 if j <= t
    t = torch.arange(1, L + 1, dtype=q.dtype, device=q.device)
    k_prefix = torch.einsum("tj,bhjd->bhtd", tril, k)
    q_prefix = torch.einsum("tj,bhjd->bhtd", tril, q)
    incoming = t / torch.einsum("bhtd,bhtd->bht", q + eps, k_prefix + eps)
    outgoing = t / torch.einsum("bhtd,bhtd->bht", k + eps, q_prefix + eps)
    sink_prefix = torch.einsum("tj,bhjd->bhtd", tril, k * outgoing[..., None])
    source_prefix = torch.einsum("tj,bhjd->bhtd", tril, q * incoming[..., None])
    conserved_sink = torch.einsum("bhtd,bhtd->bht", q + eps, sink_prefix + eps) / t
    conserved_source = (torch.einsum("bhtd,bhtd->bht", k + eps, source_prefix + eps) / t).clamp(-clamp, clamp)
    e = torch.exp(conserved_source)
    competition = t * e / torch.einsum("tj,bhj->bht", tril, e)
    allocation = torch.sigmoid(conserved_sink)
    attn = torch.einsum("bhtd,bhjd->bhtj", q * (incoming / t)[..., None], k) * tril
    return torch.einsum("bhtj,bhjm->bhtm", attn, v * competition[..., None]) * allocation[..., None]


def flow_attention_naive(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    eps: float = 1e-6,
    clamp: float = 1.0,
    key_padding_mask: Tensor | None = None,
    query_padding_mask: Tensor | None = None,
) -> Tensor:
    """Reference Flow-Attention: same contract as :func:`flowrl.ops.flow_attention` (no state, no chunks).

    q [B, H, L, D], k [B, H, S, D], v [B, H, S, M], before σ. Masks (non-causal only) are applied by
    dropping the padded rows outright, which is what "padded keys carry no flow" means.
    Memory is O(L·S) per head (causal: O(L²)).
    """
    q, k = torch.sigmoid(q), torch.sigmoid(k)
    if causal:
        return _causal_all(q, k, v, eps, clamp)
    out = torch.zeros(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    for b in range(q.shape[0]):
        qi = torch.arange(q.shape[2]) if query_padding_mask is None else (~query_padding_mask[b]).nonzero()[:, 0]
        ki = torch.arange(k.shape[2]) if key_padding_mask is None else (~key_padding_mask[b]).nonzero()[:, 0]
        out[b][:, qi] = _noncausal_one(q[b][:, qi], k[b][:, ki], v[b][:, ki], eps, clamp)
    return out


def flow_attention_causal_materialized(q: Tensor, k: Tensor, v: Tensor, *, eps: float = 1e-6, clamp: float = 1.0):
    """The Flowformer reference code's causal form: a cumulative sum over a [B, H, L, D, M] tensor.

    Kept as the memory/speed baseline of ``flowrl bench attention``; its output equals the fast op.
    """
    q, k = torch.sigmoid(q), torch.sigmoid(k)
    L = q.shape[2]
    normal = torch.arange(1, L + 1, dtype=q.dtype, device=q.device)[None, None, :]
    incoming = normal / torch.einsum("nhld,nhld->nhl", q + eps, k.cumsum(dim=2) + eps)
    outgoing = normal / torch.einsum("nhld,nhld->nhl", k + eps, q.cumsum(dim=2) + eps)
    conserved_sink = torch.einsum("nhld,nhld->nhl", q + eps, (k * outgoing[..., None]).cumsum(dim=2) + eps) / normal
    conserved_source = (
        torch.einsum("nhld,nhld->nhl", k + eps, (q * incoming[..., None]).cumsum(dim=2) + eps) / normal
    ).clamp(-clamp, clamp)
    allocation = torch.sigmoid(conserved_sink)
    e = torch.exp(conserved_source)
    competition = e / e.cumsum(dim=-1) * normal
    kv = torch.einsum("nhld,nhlm->nhldm", k, v * competition[..., None]).cumsum(dim=2)
    y = torch.einsum("nhld,nhldm->nhlm", q * (incoming / normal)[..., None], kv)
    return y * allocation[..., None]
