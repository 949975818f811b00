"""Flow-Attention (Flowformer, Wu et al., ICML 2022) as pure functions.

Non-causal attention follows the paper's equations; causal attention follows the reference causal form
(prefix sums normalised by position), computed as O(L·D) scans for the flow normalisers followed by a
chunked causal linear attention, so that peak memory is linear in L and a sequence can be carried
across calls through :class:`FlowState` (down to one token at a time: recurrent O(1)-per-token decoding).

The maths, per batch and head, with q_t = σ(Q_t), k_t = σ(K_t), t the 1-based position, ε = eps, c = clamp:

1. Kc_t = Σ_{j≤t} k_j, Qc_t = Σ_{j≤t} q_j; incoming I_t = t / ((q_t+ε)·(Kc_t+ε)),
   outgoing O_t = t / ((k_t+ε)·(Qc_t+ε)).
2. P_t = Σ_{j≤t} O_j k_j, R_t = Σ_{j≤t} I_j q_j; conserved sink Î_t = (q_t+ε)·(P_t+ε) / t,
   conserved source Ô_t = clamp((k_t+ε)·(R_t+ε) / t, −c, c).
3. Z_t = Σ_{j≤t} exp(Ô_j); competition C_t = t·exp(Ô_t) / Z_t; allocation A_t = σ(Î_t).
4. y_t = A_t · q′_t·S_t with q′_t = q_t / ((q_t+ε)·(Kc_t+ε)) and S_t = Σ_{j≤t} k_j (C_j v_j)ᵀ.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["FlowState", "flow_attention", "causal_linear_attention"]

DEFAULT_CHUNK = 64
MAX_CLAMP = 50.0  # exp(50)·2^31 tokens still fits float32: the competition sums never overflow


class FlowState(NamedTuple):
    """Everything causal Flow-Attention needs to continue a sequence; O(D·M) per batch row and head.

    Rows are independent: zeroing row b (see :meth:`reset`) restarts sequence b without touching others.
    """

    t: Tensor  # [B] tokens seen so far (int64)
    k_sum: Tensor  # [B, H, D] Σ k_j
    q_sum: Tensor  # [B, H, D] Σ q_j
    sink_sum: Tensor  # [B, H, D] Σ O_j k_j
    source_sum: Tensor  # [B, H, D] Σ I_j q_j
    z: Tensor  # [B, H] Σ exp(Ô_j)
    kv: Tensor  # [B, H, D, M] Σ k_j (C_j v_j)ᵀ

    @classmethod
    def zeros(
        cls, batch: int, heads: int, dim_qk: int, dim_v: int, *, dtype=torch.float32, device=None
    ) -> FlowState:
        """An empty state: equivalent to passing ``state=None``."""
        z = lambda *s: torch.zeros(*s, dtype=dtype, device=device)  # noqa: E731
        return cls(
            torch.zeros(batch, dtype=torch.long, device=device),
            z(batch, heads, dim_qk),
            z(batch, heads, dim_qk),
            z(batch, heads, dim_qk),
            z(batch, heads, dim_qk),
            z(batch, heads),
            z(batch, heads, dim_qk, dim_v),
        )

    def reset(self, rows: Tensor) -> FlowState:
        """Return a copy with the sequences in ``rows`` (bool mask [B] or indices) restarted."""
        keep = torch.ones(self.t.shape[0], dtype=torch.bool, device=self.t.device)
        keep[rows] = False
        return FlowState(*(x * keep.view(-1, *([1] * (x.dim() - 1))).to(x.dtype) for x in self))

    def select(self, rows: Tensor) -> FlowState:
        """The state of a subset of rows (indices or bool mask)."""
        return FlowState(*(x[rows] for x in self))

    def detach(self) -> FlowState:
        return FlowState(*(x.detach() for x in self))


def _shape_error(what: str, got, expected: str) -> ValueError:
    return ValueError(f"flow_attention: {what} has shape {tuple(got)}, expected {expected}")


def _check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise _shape_error(name, x.shape, "a 4-d tensor [B, H, L, D]")
    B, H, L, D = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise _shape_error("k", k.shape, f"[{B}, {H}, S, {D}] to match q {tuple(q.shape)}")
    S = k.shape[2]
    if v.shape[0] != B or v.shape[1] != H or v.shape[2] != S:
        raise _shape_error("v", v.shape, f"[{B}, {H}, {S}, M] to match k {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flow_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")


def _check_state(state: FlowState, B: int, H: int, D: int, M: int) -> None:
    expected = FlowState.zeros(B, H, D, M, device="meta")
    for name, got, want in zip(FlowState._fields, state, expected):
        if tuple(got.shape) != tuple(want.shape):
            raise ValueError(
                f"flow_attention: state.{name} has shape {tuple(got.shape)}, expected {tuple(want.shape)} "
                f"for q [B={B}, H={H}, L, D={D}] and v [.., M={M}]; was the state made for another shape?"
            )


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


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_d a[..., d]·b[..., d] without a matmul, so autocast never lowers the normalisers to bf16."""
    return (a * b).sum(-1)


def _causal(q, k, v, eps, clamp, state: FlowState | None, return_state: bool, chunk: int):
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
    incoming = t / _rowdot(q + eps, k_sum + eps)  # I_t  (B, H, L)
    outgoing = t / _rowdot(k + eps, q_sum + eps)  # O_t

    sink_sum = torch.cumsum(k * outgoing[..., None], dim=2)  # P_t
    source_sum = torch.cumsum(q * incoming[..., None], dim=2)  # R_t
    if state is not None:
        sink_sum = sink_sum + state.sink_sum[:, :, None].to(q.dtype)
        source_sum = source_sum + state.source_sum[:, :, None].to(q.dtype)
    conserved_sink = _rowdot(q + eps, sink_sum + eps) / t
    conserved_source = torch.clamp(_rowdot(k + eps, source_sum + eps) / t, -clamp, clamp)

    e = torch.exp(conserved_source)
    z = torch.cumsum(e, dim=-1)
    if state is not None:
        z = z + state.z[:, :, None].to(q.dtype)
    competition = t * e / z  # C_t
    allocation = torch.sigmoid(conserved_sink)  # A_t

    q_norm = q * (incoming / t)[..., None]  # q_t / ((q_t+ε)·(Kc_t+ε))
    v_comp = v * competition[..., None]
    y, kv = causal_linear_attention(
        q_norm, k, v_comp, state.kv.to(q.dtype) if state is not None else None, chunk=chunk
    )
    y = y * allocation[..., None]
    new_state = None
    if return_state:
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


def _noncausal(q, k, v, eps, clamp, key_padding_mask, query_padding_mask):
    L, S = q.shape[2], k.shape[2]
    n_q = q.new_full((q.shape[0], 1), float(L))
    n_k = q.new_full((q.shape[0], 1), float(S))
    key_valid = None
    if key_padding_mask is not None:
        key_valid = ~key_padding_mask  # (B, S)
        k = k * key_valid[:, None, :, None].to(k.dtype)  # padded keys carry no flow
        n_k = key_valid.sum(-1, keepdim=True).to(q.dtype)
    if query_padding_mask is not None:
        query_valid = ~query_padding_mask
        q = q * query_valid[:, None, :, None].to(q.dtype)
        n_q = query_valid.sum(-1, keepdim=True).to(q.dtype)

    incoming = 1.0 / _rowdot(q + eps, k.sum(dim=2, keepdim=True) + eps)  # (B, H, L)
    outgoing = 1.0 / _rowdot(k + eps, q.sum(dim=2, keepdim=True) + eps)  # (B, H, S)
    conserved_sink = _rowdot(q + eps, (k * outgoing[..., None]).sum(dim=2, keepdim=True) + eps)
    conserved_source = _rowdot(k + eps, (q * incoming[..., None]).sum(dim=2, keepdim=True) + eps)
    conserved_source = torch.clamp(conserved_source, -clamp, clamp)
    allocation = torch.sigmoid(conserved_sink * (n_q / n_k.clamp_min(1.0))[:, :, None])
    if key_valid is not None:
        conserved_source = conserved_source.masked_fill(~key_valid[:, None, :], float("-inf"))
    competition = torch.softmax(conserved_source, dim=-1) * n_k[:, :, None]
    kv = k.transpose(-1, -2) @ (v * competition[..., None])  # (B, H, D, M)
    y = ((q * incoming[..., None]) @ kv) * allocation[..., None]
    if query_padding_mask is not None:
        y = y * (~query_padding_mask)[:, None, :, None].to(y.dtype)
    return y


def flow_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    eps: float = 1e-6,
    clamp: float = 1.0,
    key_padding_mask: Tensor | None = None,
    query_padding_mask: Tensor | None = None,
    state: FlowState | None = None,
    return_state: bool = False,
    chunk: int = DEFAULT_CHUNK,
) -> Tensor | tuple[Tensor, FlowState]:
    """Flow-Attention.

    Args:
        q: [B, H, L, D] projected queries, before the non-negative feature map (σ, applied here).
        k: [B, H, S, D] projected keys, before σ. Causal attention needs S == L.
        v: [B, H, S, M] projected values.
        causal: token t attends to tokens ≤ t (reference causal form, prefix sums normalised by t).
        eps: added to every component before a normaliser's dot product (reference: 1e-6).
        clamp: bound c of the conserved source flow, clamp(Ô, −c, c) (reference core: 1, its RL code: 10).
        key_padding_mask: non-causal only; [B, S] bool, True marks padding. Padded keys carry no flow:
            they are left out of every sum, of the softmax competition and of the key count S.
        query_padding_mask: non-causal only; [B, L] bool, True marks padding. Padded queries are left out
            of the flow sums and the query count L, and get a zero output. For self-attention pass the
            same mask as ``key_padding_mask``.
        state: causal only; a :class:`FlowState` from an earlier call to continue that sequence.
        return_state: causal only; also return the state after the last token.
        chunk: causal chunk length (memory/speed trade-off only; results do not depend on it).

    Returns:
        y [B, H, L, M] in the dtype of q, or (y, state) when ``return_state``. Reduced-precision inputs
        are computed in float32 (the scans grow with L), float64 stays float64.
    """
    _check_inputs(q, k, v)
    B, H, L, D = q.shape
    S, M = k.shape[2], v.shape[3]
    if not (0.0 < clamp <= MAX_CLAMP):
        raise ValueError(f"flow_attention: clamp must be in (0, {MAX_CLAMP}], got {clamp}")
    if eps < 0:
        raise ValueError(f"flow_attention: eps must be >= 0, got {eps}")
    if chunk < 1:
        raise ValueError(f"flow_attention: chunk must be >= 1, got {chunk}")
    out_dtype = q.dtype
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v = (x.to(work) for x in (q, k, v))
    q, k = torch.sigmoid(q), torch.sigmoid(k)

    if causal:
        if S != L:
            raise _shape_error("k", (B, H, S, D), f"[{B}, {H}, {L}, {D}]: causal attention needs S == L")
        if key_padding_mask is not None or query_padding_mask is not None:
            raise ValueError(
                "flow_attention: padding masks are for non-causal attention; with causal attention pad "
                "on the right (padding after the last real token never reaches earlier outputs)"
            )
        if state is not None:
            _check_state(state, B, H, D, M)
        if L == 0:  # an empty continuation changes nothing
            y = v.new_zeros(B, H, 0, M).to(out_dtype)
            if state is None:
                state = FlowState.zeros(B, H, D, M, dtype=work, device=q.device)
            return (y, state) if return_state else y
        y, new_state = _causal(q, k, v, eps, clamp, state, return_state, chunk)
        y = y.to(out_dtype)
        return (y, new_state) if return_state else y

    if state is not None or return_state:
        raise ValueError("flow_attention: state/return_state need causal=True")
    for name, mask, n in (("key_padding_mask", key_padding_mask, S), ("query_padding_mask", query_padding_mask, L)):
        if mask is not None and (tuple(mask.shape) != (B, n) or mask.dtype != torch.bool):
            raise ValueError(
                f"flow_attention: {name} has shape {tuple(mask.shape)} and dtype {mask.dtype}, "
                f"expected a bool tensor of shape {(B, n)} (True = padding)"
            )
    return _noncausal(q, k, v, eps, clamp, key_padding_mask, query_padding_mask).to(out_dtype)
