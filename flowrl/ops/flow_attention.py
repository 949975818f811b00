"""Flow-Attention (Flowformer, Wu et al., ICML 2022) as pure functions.

Non-causal attention follows the paper's equations; causal attention follows the reference causal form
(prefix sums normalised by position), computed chunk by chunk as a causal linear attention whose score
matrix also yields every flow normaliser (see "Fast causal path" below), so that peak memory is linear in L
and a sequence can be carried across calls through :class:`FlowState` (down to one token at a time:
recurrent O(1)-per-token decoding). Both paths have a hand-written backward, checked against the naive
reference in float64.

The maths, per batch and head, with q_t = σ(Q_t), k_t = σ(K_t), t the 1-based position, ε = eps, c = clamp:

1. Kc_t = Σ_{j≤t} k_j, Qc_t = Σ_{j≤t} q_j; incoming I_t = t / ((q_t+ε)·(Kc_t+ε)),
   outgoing O_t = t / ((k_t+ε)·(Qc_t+ε)).
2. P_t = Σ_{j≤t} O_j k_j, R_t = Σ_{j≤t} I_j q_j; conserved sink Î_t = (q_t+ε)·(P_t+ε) / t,
   conserved source Ô_t = clamp((k_t+ε)·(R_t+ε) / t, −c, c).
3. Z_t = Σ_{j≤t} exp(Ô_j); competition C_t = t·exp(Ô_t) / Z_t; allocation A_t = σ(Î_t).
4. y_t = A_t · q′_t·S_t with q′_t = q_t / ((q_t+ε)·(Kc_t+ε)) and S_t = Σ_{j≤t} k_j (C_j v_j)ᵀ.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["FlowState", "flow_attention", "causal_linear_attention", "state_updates_in_place"]

DEFAULT_CHUNK = 64
SHORT_STEP = 16  # continuations of up to this many tokens take the lean stateful path (inference only)
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
    def zeros(cls, batch: int, heads: int, dim_qk: int, dim_v: int, *, dtype=torch.float32, device=None) -> FlowState:
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


_LOCAL = threading.local()


@contextlib.contextmanager
def state_updates_in_place() -> Iterator[None]:
    """Within this block, inference-mode causal calls that continue a :class:`FlowState` in one chunk (a
    decoding or rollout step) add to the state's D×M matrix in place and return it in the new state, so the
    old state object must not be used again. Saves a copy of [B, H, D, M] per call and layer (0.24 ms of a
    7 ms DT rollout step at B=20, D=M=128 on the 2-core CPU). Calls that need gradients are unaffected."""
    before = getattr(_LOCAL, "inplace", False)
    _LOCAL.inplace = True
    try:
        yield
    finally:
        _LOCAL.inplace = before


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
    expected = ((B,), (B, H, D), (B, H, D), (B, H, D), (B, H, D), (B, H), (B, H, D, M))  # FlowState's fields
    for name, got, want in zip(FlowState._fields, state, expected):
        if tuple(got.shape) != want:
            raise ValueError(
                f"flow_attention: state.{name} has shape {tuple(got.shape)}, expected {want} "
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
    y, kv = causal_linear_attention(q_norm, k, v_comp, state.kv.to(q.dtype) if state is not None else None, chunk=chunk)
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
    chunk: int | None = None,
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
        chunk: longest causal chunk (memory/speed trade-off only; results do not depend on it); the
            sequence is cut into equal chunks of at most this length. None picks it from L: the whole
            sequence up to 128 tokens, else 64.

    Returns:
        y [B, H, L, M] in the dtype of q, or (y, state) when ``return_state``. Reduced-precision inputs
        are computed in float32 (the scans grow with L), float64 stays float64; causal attention under
        autocast, or on bfloat16/float16 inputs, runs its value products (q′·k v′ᵀ and their gradients)
        in that 16-bit dtype, never the normalisers.
    """
    _check_inputs(q, k, v)
    B, H, L, D = q.shape
    S, M = k.shape[2], v.shape[3]
    if not (0.0 < clamp <= MAX_CLAMP):
        raise ValueError(f"flow_attention: clamp must be in (0, {MAX_CLAMP}], got {clamp}")
    if eps < 0:
        raise ValueError(f"flow_attention: eps must be >= 0, got {eps}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"flow_attention: chunk must be >= 1, got {chunk}")
    out_dtype = q.dtype
    work = torch.float64 if q.dtype == torch.float64 else torch.float32

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
        chunk = _auto_chunk(L) if chunk is None else chunk
        lowp = _value_dtype(q, work)
        with _no_autocast(q.device.type):  # precision is chosen here: `work` for normalisers, `lowp` for values
            y, new_state = _causal_dispatch(q, k, v, eps, clamp, state, return_state, chunk, work, lowp)
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
    with _no_autocast(q.device.type):
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return _FastNonCausal.apply(q, k, v, eps, clamp, key_padding_mask, query_padding_mask)
        y, _ = _fast_noncausal_forward(q, k, v, eps, clamp, key_padding_mask, query_padding_mask, work, False)
        return y.to(out_dtype)


# ---------------------------------------------------------------------------------------------------------
# Fast causal path: one score matrix per chunk gives every normaliser, and a hand-written backward.
#
# With S = q kᵀ inside a chunk (the matrix the chunked linear attention needs anyway), every normaliser's
# dot product is a row or column reduction of S plus a D-vector carried across chunks:
#   q_t·Kc_t = Σ_{j≤t} S_tj + q_t·Kc⁰,     k_t·Qc_t = Σ_{j≤t} S_jt + k_t·Qc⁰,
#   q_t·P_t  = Σ_{j≤t} S_tj O_j + q_t·P⁰,  k_t·R_t  = Σ_{j≤t} S_jt I_j + k_t·R⁰,
# and the ε terms expand as (a+ε)·(b+ε) = a·b + ε(Σ_d a + Σ_d b) + Dε², whose Σ_d parts are O(L) scans.
# So no O(L·D) cumulative sum is taken: a scan along L is latency-bound on CPU (~8x an elementwise pass).
# The backward has the same shape. Every gradient that reaches q and k through a normaliser is a rank-one
# term of the chunk's C×C gradient matrix of the linear attention, so dq = H k and dk = Hᵀ q with
#   H_ij = gh_i·v'_j + α_i O_j + γ_i   (j ≤ i),     H_ij += I_i β_j + δ_j   (j ≥ i),
# where gh = ∂/∂(q′S), α = ∂/∂Î / t, β = ∂/∂Ô / t (zero where the clamp binds), γ = ∂/∂dI, δ = ∂/∂dO, plus
# D-vectors carried across chunks and the ε terms, which are multiples of the all-ones vector.
# Matrix-vector products are written as vector-matrix products ((1, C) @ (C, C)): ~8x faster on CPU.
# ---------------------------------------------------------------------------------------------------------


def _auto_chunk(L: int) -> int:
    # One chunk up to 128 tokens (no carried state at all); beyond, 64 measured fastest on CPU
    # (the C×C products grow with C, the carried D×M states with L/C).
    return L if L <= 128 else DEFAULT_CHUNK


def _chunk_len(L: int, chunk: int) -> int:
    """Equal chunks of at most ``chunk`` tokens, so that the zero padding is less than one per chunk."""
    n = -(-L // min(chunk, L))
    return -(-L // n)


def _chunk_cumsum(x: Tensor, dim: int, *, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Exclusive prefix sum along ``dim`` (Σ over strictly earlier, or with ``reverse`` later, entries).

    Overwrites ``x`` and returns it with the total over ``dim``. The chunk axis is short; where each
    slice along it is large (a D×M state) a loop of whole-slice adds is several times faster than
    ``torch.cumsum``, whose scan is a latency-bound one-element-at-a-time loop.
    """
    n = x.shape[dim]
    if x.numel() // max(n, 1) < 2048:
        if reverse:
            c = x.flip(dim).cumsum(dim).flip(dim)
            x.narrow(dim, 0, n - 1).copy_(c.narrow(dim, 1, n - 1))
            x.select(dim, n - 1).zero_()
            return x, c.select(dim, 0)
        c = x.cumsum(dim)
        x.narrow(dim, 1, n - 1).copy_(c.narrow(dim, 0, n - 1))
        x.select(dim, 0).zero_()
        return x, c.select(dim, n - 1)
    carry = None
    for i in range(n - 1, -1, -1) if reverse else range(n):
        cur = x.select(dim, i)
        if carry is None:
            carry = cur.clone()
            cur.zero_()
        else:
            nxt = carry + cur
            cur.copy_(carry)
            carry = nxt
    return x, carry


def _rev_cumsum(x: Tensor) -> Tensor:
    """Σ over this and later entries along the last dimension."""
    return x.flip(-1).cumsum(-1).flip(-1)


def _fast_causal_forward(Q, K, V, eps, clamp, state, chunk, work, need_state, save, lowp=None):
    B, H, L, D = Q.shape
    M = V.shape[-1]
    C = _chunk_len(L, chunk)
    N = -(-L // C)
    Lp = N * C
    cross = N > 1 or state is not None or need_state  # something is carried between chunks or calls
    dev = Q.device
    st = None
    if state is not None:
        st = [x.to(work) for x in state[1:]]  # k_sum, q_sum, sink_sum, source_sum, z, kv

    qk = Q.new_empty((2, B, H, Lp, D), dtype=work)  # [q, k] after σ; the padded tail is zero
    for i, X in enumerate((Q, K)):
        if X.dtype == work:
            torch.sigmoid(X, out=qk[i, :, :, :L])
        else:  # σ in the working precision, as the reference does
            qk[i, :, :, :L].copy_(X).sigmoid_()
    if Lp > L:
        qk[:, :, :, L:].zero_()
    qkc = qk.view(2, B, H, N, C, D)
    qc, kc = qkc[0], qkc[1]
    t = torch.arange(1, Lp + 1, dtype=work, device=dev)
    if state is not None:
        t = state.t.to(work).view(B, 1, 1) + t  # (B, 1, Lp)

    S = qc @ kc.transpose(-1, -2)  # (B, H, N, C, C): S[i, j] = q_i·k_j
    Sl = S.tril()
    Su = S.triu_()
    rs = qk.sum(-1)  # (2, B, H, Lp): [Σ_d q, Σ_d k]
    dens = torch.stack((Sl.sum(-1), Su.sum(-2))).view(2, B, H, Lp)  # [q·Kc, k·Qc] within the chunk
    c0 = sums = None
    if cross:
        sums = qkc.sum(-2)  # (2, B, H, N, D): per-chunk [Σq, Σk]
        c0, c_end = _chunk_cumsum(sums, -2)  # [Qc⁰, Kc⁰] entering each chunk
        if st is not None:
            c0 += torch.stack((st[1], st[0]))[:, :, :, None]
        dens += (c0.flip(0).unsqueeze(-2) @ qkc.transpose(-1, -2)).view(2, B, H, Lp)  # q·Kc⁰, k·Qc⁰
    srs = rs.cumsum(-1)  # [Σ_d Qc, Σ_d Kc]
    if st is not None:
        srs += torch.stack((st[1], st[0])).sum(-1)[..., None]
    dens.add_(rs + srs.flip(0), alpha=eps).add_(D * eps * eps)  # [(q+ε)·(Kc+ε), (k+ε)·(Qc+ε)]
    flows = t / dens  # [I, O]
    I, O = flows[0], flows[1]
    Ir, Or = I.view(B, H, N, 1, C), O.view(B, H, N, 1, C)

    cons = torch.stack(((Or @ Sl.transpose(-1, -2)), (Ir @ Su))).view(2, B, H, Lp)  # [q·P, k·R] in-chunk
    p0 = psum = None
    if cross:
        psum = torch.stack(((Or @ kc), (Ir @ qc))).squeeze(-2)  # (2, B, H, N, D): [ΣOk, ΣIq] per chunk
        p0, p_end = _chunk_cumsum(psum, -2)  # [P⁰, R⁰]
        if st is not None:
            p0 += torch.stack((st[2], st[3]))[:, :, :, None]
        cons += (p0.unsqueeze(-2) @ qkc.transpose(-1, -2)).view(2, B, H, Lp)
    sfr = (flows * rs).cumsum(-1)  # [Σ_d R, Σ_d P]
    if st is not None:
        sfr += torch.stack((st[3], st[2])).sum(-1)[..., None]
    cons.add_(rs + sfr.flip(0), alpha=eps).add_(D * eps * eps).div_(t)  # [Î, unclamped Ô]
    if not save:  # free what is dead before the next large allocations: fewer fresh pages to fault in
        del S, Su
    u = cons[1]
    e = torch.exp(u.clamp(-clamp, clamp))
    Z = e.cumsum(-1)
    if st is not None:
        Z += st[4][..., None]
    comp = t * e / Z  # competition C_t
    A = torch.sigmoid(cons[0])  # allocation A_t
    w = A / dens[0]  # A_t·I_t/t: the output scale of the unnormalised linear attention

    vp = V.new_empty((B, H, Lp, M), dtype=work)  # C_t v_t, zero-padded
    torch.mul(V, comp[..., :L, None], out=vp[:, :, :L])
    if Lp > L:
        vp[:, :, L:].zero_()
    vpc = vp.view(B, H, N, C, M)
    # The value products may run in `lowp` (autocast); everything that feeds a normaliser stays in `work`.
    lp = None
    if lowp is not None:
        lp = (qk.to(lowp) if cross or save else None, Sl.to(lowp), vpc.to(lowp))  # [q, k], tril(S), v'
        h = (lp[1] @ lp[2]).to(work)
    else:
        h = Sl @ vpc  # (B, H, N, C, M)
    KV0 = kv_end = None
    if cross and N == 1 and not save:
        # One chunk continuing a state (incremental decoding, rollouts): the state *is* the prefix entering
        # the chunk, so read it in place and write the new state with one fused product, instead of the
        # general path's copy/zero/add passes over [B, H, D, M] (~4x faster for a DT rollout step).
        kc_t = (lp[0][1] if lp is not None else kc).reshape(B * H, C, D).transpose(-1, -2)
        vv = (lp[2] if lp is not None else vpc).reshape(B * H, C, M)
        if st is not None:
            kv_prev = st[5].reshape(B * H, D, M)
            if lp is None:
                h.view(-1, C, M).baddbmm_(qc.reshape(-1, C, D), kv_prev)
            else:
                h += (lp[0][0].view(B, H, N, C, D) @ kv_prev.to(lowp).view(B, H, 1, D, M)).to(work)
            if need_state and getattr(_LOCAL, "inplace", False):
                kv_end = kv_prev.baddbmm_(kc_t.to(work), vv.to(work)).view(B, H, D, M)
            elif need_state:
                kv_end = torch.baddbmm(kv_prev, kc_t.to(work), vv.to(work)).view(B, H, D, M)
        elif need_state:
            kv_end = (kc_t @ vv).to(work).view(B, H, D, M)
    elif cross:
        if lp is None:
            kvsum = kc.transpose(-1, -2) @ vpc  # (B, H, N, D, M)
        else:
            kvsum = (lp[0][1].view(B, H, N, C, D).transpose(-1, -2) @ lp[2]).to(work)
        KV0, kv_end = _chunk_cumsum(kvsum, 2)
        if st is not None:
            KV0 += st[5][:, :, None]
        if lp is None:
            h.view(-1, C, M).baddbmm_(qc.reshape(-1, C, D), KV0.view(-1, D, M))
        else:
            h += lp[0][0].view(B, H, N, C, D) @ KV0.to(lowp)
    h = h.view(B, H, Lp, M)
    if not save:
        del Sl, vpc, vp, qkc, qc, kc, qk
    y = h[:, :, :L] * w[..., :L, None] if save else h.mul_(w[..., None])[:, :, :L]

    new_state = None
    if need_state:
        t_end = (state.t if state is not None else torch.zeros(B, dtype=torch.long, device=dev)) + L
        new_state = FlowState(
            t_end,
            c_end[1] + (st[0] if st is not None else 0),
            c_end[0] + (st[1] if st is not None else 0),
            p_end[0] + (st[2] if st is not None else 0),
            p_end[1] + (st[3] if st is not None else 0),
            Z[..., L - 1],
            kv_end if N == 1 and not save else kv_end + (st[5] if st is not None else 0),
        )
    saved = None
    if save:
        saved = (qk, vp, Sl, Su, h, rs, t, dens, flows, u, A, w, e, Z, comp, KV0, c0, p0, lp)
    return y, new_state, saved


def _fast_causal_backward(gy, saved, eps, clamp, L, C):
    qk, vp, Sl, Su, h, rs, t, dens, flows, u, A, w, e, Z, comp, KV0, c0, p0, lp = saved
    _, B, H, Lp, D = qk.shape
    M = vp.shape[-1]
    N = Lp // C
    X = B * H * N  # number of chunks in the batch
    work = qk.dtype
    cross = c0 is not None
    qkc = qk.view(2, B, H, N, C, D)
    qc, kc = qkc[0], qkc[1]
    vpc = vp.view(B, H, N, C, M)
    dI, dO = dens[0], dens[1]
    I, O = flows[0], flows[1]
    row = lambda x: x.view(B, H, N, 1, -1)  # noqa: E731  (…, 1, C) or (…, 1, D)
    col = lambda x: x.reshape(X, C, 1)  # noqa: E731

    if Lp > L:
        gyp = gy.new_zeros((B, H, Lp, M), dtype=work)
        gyp[:, :, :L] = gy
        gy = gyp
    else:
        gy = gy.to(work).contiguous()
    gh = gy * w[..., None]  # ∂/∂h_t, h_t = q_t·S_t
    gw = torch.linalg.vecdot(gy, h)
    alpha = gw / dI * A * (1 - A) / t  # ∂/∂Î, over t
    ghc = gh.view(B, H, N, C, M)
    if lp is not None:  # the value products in low precision (see _fast_causal_forward)
        lowp = lp[1].dtype
        qkl = lp[0].view(2, B, H, N, C, D) if lp[0] is not None else None
        ghl = ghc.to(lowp)
        gvp = (lp[1].transpose(-1, -2) @ ghl).to(work)
    else:
        gvp = Sl.transpose(-1, -2) @ ghc  # ∂/∂(C_j v_j) within the chunk, (B, H, N, C, M)
    gO = (row(alpha) @ Sl).view(B, H, Lp)  # Σ_{i≥j} α_i q_i·k_j within the chunk
    if cross:
        if lp is None:
            GN, _ = _chunk_cumsum(qc.transpose(-1, -2) @ ghc, 2, reverse=True)  # Σ_later q ghᵀ, (B, H, N, D, M)
            gvp.view(X, C, M).baddbmm_(kc.reshape(X, C, D), GN.view(X, D, M))
        else:
            GN, _ = _chunk_cumsum((qkl[0].transpose(-1, -2) @ ghl).to(work), 2, reverse=True)
            gvp += qkl[1] @ GN.to(lowp)
        AQ, _ = _chunk_cumsum(row(alpha) @ qc, 2, reverse=True)  # Σ_later α q, (B, H, N, 1, D)
        gO += (AQ @ kc.transpose(-1, -2)).view(B, H, Lp)
    gvp = gvp.view(B, H, Lp, M)
    gcomp = torch.linalg.vecdot(gvp, vp) / comp
    gZ = -gcomp * comp / Z
    ge = gcomp * t / Z + _rev_cumsum(gZ)
    beta = ge * e * ((u >= -clamp) & (u <= clamp)) / t  # ∂/∂Ô (through the clamp), over t
    gI = (row(beta) @ Su.transpose(-1, -2)).view(B, H, Lp)  # Σ_{i≥j} β_i q_j·k_i within the chunk
    BK = None
    if cross:
        BK, _ = _chunk_cumsum(row(beta) @ kc, 2, reverse=True)  # Σ_later β k
        gI += (BK @ qc.transpose(-1, -2)).view(B, H, Lp)
    rab = _rev_cumsum(torch.stack((alpha, beta)))
    gO += eps * rs[1] * rab[0]
    gI += eps * rs[0] * rab[1]
    gamma = -(gw * w + gI * I) / dI  # ∂/∂dI
    delta = -gO * O / dO  # ∂/∂dO
    rgd = _rev_cumsum(torch.stack((gamma, delta)))

    if lp is None:
        G = torch.baddbmm(col(gamma), ghc.view(X, C, M), vpc.view(X, C, M).transpose(-1, -2))
    else:
        G = (ghl.view(X, C, M) @ lp[2].view(X, C, M).transpose(-1, -2)).to(work).add_(col(gamma))
    G.addcmul_(col(alpha), O.view(X, 1, C)).tril_()
    G += torch.addcmul(delta.view(X, 1, C), col(I), beta.view(X, 1, C)).triu_()
    if lp is None:
        gq = G @ qkc[1].reshape(X, C, D)
        gk = G.transpose(-1, -2) @ qkc[0].reshape(X, C, D)
    else:
        Gl = G.to(lowp)
        gq = (Gl @ qkl[1].reshape(X, C, D)).to(work)
        gk = (Gl.transpose(-1, -2) @ qkl[0].reshape(X, C, D)).to(work)
    # D-vector terms: coefficients (X, C, n) @ vectors (X, n, D); the ε terms multiply the ones vector
    eq = eps * (alpha + gamma + I * rab[1] + rgd[1])
    ek = eps * (beta + delta + O * rab[0] + rgd[0])
    if cross:
        if lp is None:
            gq.baddbmm_(ghc.view(X, C, M), KV0.view(X, D, M).transpose(-1, -2))
            gk.baddbmm_(vpc.view(X, C, M), GN.view(X, D, M).transpose(-1, -2))
        else:
            gq += ghl.view(X, C, M) @ KV0.to(lowp).view(X, D, M).transpose(-1, -2)
            gk += lp[2].view(X, C, M) @ GN.to(lowp).view(X, D, M).transpose(-1, -2)
        GQ, _ = _chunk_cumsum(row(gamma) @ qc, 2, reverse=True)  # Σ_later γ q
        DK, _ = _chunk_cumsum(row(delta) @ kc, 2, reverse=True)  # Σ_later δ k
        ones = torch.ones_like(DK)
        Qc0, Kc0, P0, R0 = (x.unsqueeze(-2) for x in (c0[0], c0[1], p0[0], p0[1]))
        cq = torch.stack((alpha, gamma, I, torch.ones_like(I), eq), -1).view(X, C, 5)
        ck = torch.stack((O, torch.ones_like(O), beta, delta, ek), -1).view(X, C, 5)
        gq.baddbmm_(cq, torch.cat((P0, Kc0, BK, DK, ones), -2).view(X, 5, D))
        gk.baddbmm_(ck, torch.cat((AQ, GQ, R0, Qc0, ones), -2).view(X, 5, D))
    else:
        gq += eq.view(X, C, 1)
        gk += ek.view(X, C, 1)
    gq, gk = gq.view(B, H, Lp, D), gk.view(B, H, Lp, D)
    gQ = torch.ops.aten.sigmoid_backward.grad_input(gq, qk[0], grad_input=gq)[:, :, :L]
    gK = torch.ops.aten.sigmoid_backward.grad_input(gk, qk[1], grad_input=gk)[:, :, :L]
    gV = gvp.mul_(comp[..., None])[:, :, :L]
    return gQ, gK, gV


class _FastCausal(torch.autograd.Function):
    """Causal flow attention on raw q, k, v with the hand-written backward above; state is a constant."""

    @staticmethod
    def forward(ctx, Q, K, V, eps, clamp, chunk, state, lowp):
        work = torch.float64 if Q.dtype == torch.float64 else torch.float32
        y, _, saved = _fast_causal_forward(Q, K, V, eps, clamp, state, chunk, work, False, True, lowp)
        ctx.saved = saved
        ctx.meta = (eps, clamp, Q.shape[2], _chunk_len(Q.shape[2], chunk), (Q.dtype, K.dtype, V.dtype))
        return y.to(Q.dtype)

    @staticmethod
    def backward(ctx, gy):
        eps, clamp, L, C, dtypes = ctx.meta
        with _no_autocast(gy.device.type):
            gQ, gK, gV = _fast_causal_backward(gy, ctx.saved, eps, clamp, L, C)
        return gQ.to(dtypes[0]), gK.to(dtypes[1]), gV.to(dtypes[2]), None, None, None, None, None


def _value_dtype(q: Tensor, work: torch.dtype) -> torch.dtype | None:
    """Precision of the causal value products q′·(k v′ᵀ) and their gradients: the autocast dtype under
    autocast, else a 16-bit input's own dtype, else None (= `work`). Normalisers never use it."""
    if work == torch.float64:
        return None
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return q.dtype if q.dtype in (torch.bfloat16, torch.float16) else None


def _no_autocast(device_type: str):
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _causal_dispatch(q, k, v, eps, clamp, state, return_state, chunk, work, lowp=None):
    """Fast forward (+ hand-written backward) unless gradients must flow through a carried state."""
    state_grad = state is not None and any(x.requires_grad for x in state)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or state_grad)
    if not needs_grad:
        if state is not None and q.shape[2] == 1:  # recurrent decoding: one token, few small ops
            y, new_state = _recurrent_step(q, k, v, eps, clamp, state, work)
            return y, (new_state if return_state else None)
        if state is not None and q.shape[2] <= SHORT_STEP:  # a few tokens (a DT rollout step): the same
            y, new_state = _short_step(q, k, v, eps, clamp, state, work)
            return y, (new_state if return_state else None)
        y, new_state, _ = _fast_causal_forward(q, k, v, eps, clamp, state, chunk, work, return_state, False, lowp)
        return y, new_state
    if not (return_state or state_grad):
        return _FastCausal.apply(q, k, v, eps, clamp, chunk, state, lowp), None
    # Gradients into or out of a state: plain autograd through the scan form.
    q, k, v = (x.to(work) for x in (q, k, v))
    return _causal(torch.sigmoid(q), torch.sigmoid(k), v, eps, clamp, state, return_state, chunk)


# ---------------------------------------------------------------------------------------------------------
# Fast non-causal path: the same expansion of the ε products turns every normaliser into a (2, D) @ (D, L)
# product with whole-sequence D-vectors, and the backward into two L×M @ M×D products plus rank-4 terms.
# ---------------------------------------------------------------------------------------------------------


def _fast_noncausal_forward(Q, K, V, eps, clamp, key_padding_mask, query_padding_mask, work, save):
    B, H, L, D = Q.shape
    S = K.shape[2]
    q, k = torch.sigmoid(Q.to(work)), torch.sigmoid(K.to(work))
    n_q = torch.full((B, 1, 1), float(L), dtype=work, device=Q.device)
    n_k = torch.full((B, 1, 1), float(S), dtype=work, device=Q.device)
    if key_padding_mask is not None:  # padded keys carry no flow
        key_valid = ~key_padding_mask
        k.mul_(key_valid[:, None, :, None])
        n_k = key_valid.sum(-1).to(work).view(B, 1, 1)
    if query_padding_mask is not None:  # padded queries get no flow and a zero output (q = 0 ⇒ y = 0)
        query_valid = ~query_padding_mask
        q.mul_(query_valid[:, None, :, None])
        n_q = query_valid.sum(-1).to(work).view(B, 1, 1)
    Ks, Qs = k.sum(-2), q.sum(-2)  # (B, H, D)
    one = torch.ones_like(Ks)
    a = torch.stack((Ks, one), -2) @ q.transpose(-1, -2)  # (B, H, 2, L): [q·Ks, Σ_d q]
    b = torch.stack((Qs, one), -2) @ k.transpose(-1, -2)  # (B, H, 2, S): [k·Qs, Σ_d k]
    dI = a[:, :, 0] + eps * (a[:, :, 1] + Ks.sum(-1, keepdim=True)) + D * eps * eps  # (q+ε)·(ΣK+ε)
    dO = b[:, :, 0] + eps * (b[:, :, 1] + Qs.sum(-1, keepdim=True)) + D * eps * eps
    I, O = 1.0 / dI, 1.0 / dO
    Pv = (O.unsqueeze(-2) @ k).squeeze(-2)  # Σ_j O_j k_j, (B, H, D)
    Rv = (I.unsqueeze(-2) @ q).squeeze(-2)  # Σ_i I_i q_i
    sink = (Pv.unsqueeze(-2) @ q.transpose(-1, -2)).squeeze(-2) + eps * (a[:, :, 1] + Pv.sum(-1, keepdim=True))
    u = (Rv.unsqueeze(-2) @ k.transpose(-1, -2)).squeeze(-2) + eps * (b[:, :, 1] + Rv.sum(-1, keepdim=True))
    sink += D * eps * eps
    u += D * eps * eps
    source = u.clamp(-clamp, clamp)
    if key_padding_mask is not None:
        source = source.masked_fill(key_padding_mask[:, None, :], float("-inf"))
    comp = torch.softmax(source, dim=-1) * n_k  # competition, (B, H, S)
    ratio = n_q / n_k.clamp_min(1.0)
    A = torch.sigmoid(sink * ratio)  # allocation
    w = A * I
    vp = V * comp[..., None]  # (B, H, S, M) in `work`
    KV = k.transpose(-1, -2) @ vp  # (B, H, D, M)
    h = q @ KV  # (B, H, L, M)
    y = h * w[..., None] if save else h.mul_(w[..., None])
    saved = (q, k, V, vp, h, KV, I, O, A, w, comp, u, Pv, Rv, Ks, Qs, n_k, ratio) if save else None
    return y, saved


def _fast_noncausal_backward(gy, saved, eps, clamp):
    q, k, V, vp, h, KV, I, O, A, w, comp, u, Pv, Rv, Ks, Qs, n_k, ratio = saved
    gy = gy.to(q.dtype)
    gw = torch.linalg.vecdot(gy, h)
    gh = gy * w[..., None]
    gKV = q.transpose(-1, -2) @ gh  # (B, H, D, M)
    gvp = k @ gKV  # (B, H, S, M)
    gcomp = torch.linalg.vecdot(gvp, V.to(q.dtype))
    gsrc = comp * (gcomp - (comp * gcomp).sum(-1, keepdim=True) / n_k)  # softmax backward (× n_k)
    gu = gsrc * ((u >= -clamp) & (u <= clamp))
    gs = gw * I * A * (1 - A) * ratio  # ∂/∂sink
    gI = gw * A
    row = lambda x: x.unsqueeze(-2)  # noqa: E731
    gPv = (row(gs) @ q).squeeze(-2) + eps * gs.sum(-1, keepdim=True)  # Σ_i gs_i (q_i+ε)
    gRv = (row(gu) @ k).squeeze(-2) + eps * gu.sum(-1, keepdim=True)
    gO = (row(gPv) @ k.transpose(-1, -2)).squeeze(-2)
    gI += (row(gRv) @ q.transpose(-1, -2)).squeeze(-2)
    gdI = -gI * I * I
    gdO = -gO * O * O
    gKs = (row(gdI) @ q).squeeze(-2) + eps * gdI.sum(-1, keepdim=True)
    gQs = (row(gdO) @ k).squeeze(-2) + eps * gdO.sum(-1, keepdim=True)
    gq = gh @ KV.transpose(-1, -2)
    gq += torch.stack((gs, I, gdI, torch.ones_like(gs)), -1) @ torch.stack((Pv + eps, gRv, Ks + eps, gQs), -2)
    gk = vp @ gKV.transpose(-1, -2)
    gk += torch.stack((O, gu, gdO, torch.ones_like(O)), -1) @ torch.stack((gPv, Rv + eps, Qs + eps, gKs), -2)
    gQ = torch.ops.aten.sigmoid_backward.grad_input(gq, q, grad_input=gq)  # q = 0 where padded: no grad
    gK = torch.ops.aten.sigmoid_backward.grad_input(gk, k, grad_input=gk)
    gV = gvp.mul_(comp[..., None])
    return gQ, gK, gV


class _FastNonCausal(torch.autograd.Function):
    """Non-causal flow attention on raw q, k, v with the hand-written backward above."""

    @staticmethod
    def forward(ctx, Q, K, V, eps, clamp, key_padding_mask, query_padding_mask):
        work = torch.float64 if Q.dtype == torch.float64 else torch.float32
        y, saved = _fast_noncausal_forward(Q, K, V, eps, clamp, key_padding_mask, query_padding_mask, work, True)
        ctx.save_for_backward(V)  # an input: saved the checked way (an in-place change of v raises)
        ctx.saved = saved[:2] + (None,) + saved[3:]
        ctx.meta = (eps, clamp, (Q.dtype, K.dtype, V.dtype))
        return y.to(Q.dtype)

    @staticmethod
    def backward(ctx, gy):
        eps, clamp, dtypes = ctx.meta
        with _no_autocast(gy.device.type):
            saved = ctx.saved[:2] + ctx.saved_tensors + ctx.saved[3:]
            gQ, gK, gV = _fast_noncausal_backward(gy, saved, eps, clamp)
        return gQ.to(dtypes[0]), gK.to(dtypes[1]), gV.to(dtypes[2]), None, None, None, None


def _recurrent_step(Q, K, V, eps, clamp, state: FlowState, work):
    """One token of causal flow attention from a carried state (the maths of steps 1-4 at L = 1)."""
    B = Q.shape[0]
    q, k = torch.sigmoid(Q.to(work)), torch.sigmoid(K.to(work))  # (B, H, 1, D)
    v = V.to(work)
    t = (state.t + 1).to(work).view(B, 1, 1)
    k_sum = state.k_sum.to(work).unsqueeze(2) + k
    q_sum = state.q_sum.to(work).unsqueeze(2) + q
    qe, ke = q + eps, k + eps
    dI = torch.linalg.vecdot(qe, k_sum + eps)  # (B, H, 1)
    dO = torch.linalg.vecdot(ke, q_sum + eps)
    I, O = t / dI, t / dO
    sink_sum = torch.addcmul(state.sink_sum.to(work).unsqueeze(2), O.unsqueeze(-1), k)
    source_sum = torch.addcmul(state.source_sum.to(work).unsqueeze(2), I.unsqueeze(-1), q)
    sink = torch.linalg.vecdot(qe, sink_sum + eps) / t
    source = (torch.linalg.vecdot(ke, source_sum + eps) / t).clamp_(-clamp, clamp)
    e = torch.exp(source)
    z = state.z.to(work).unsqueeze(-1) + e
    comp = t * e / z
    kt, vc = k.transpose(-1, -2), v * comp.unsqueeze(-1)
    if getattr(_LOCAL, "inplace", False):
        kv = state.kv.to(work)
        kv.view(-1, *kv.shape[-2:]).baddbmm_(kt.reshape(-1, *kt.shape[-2:]), vc.reshape(-1, *vc.shape[-2:]))
    else:
        kv = torch.matmul(kt, vc).add_(state.kv.to(work))  # (B, H, D, M)
    y = (q @ kv).mul_((torch.sigmoid(sink) / dI).unsqueeze(-1))
    new_state = FlowState(
        state.t + 1, k_sum.squeeze(2), q_sum.squeeze(2), sink_sum.squeeze(2), source_sum.squeeze(2), z.squeeze(-1), kv
    )
    return y, new_state


def _short_step(Q, K, V, eps, clamp, state: FlowState, work):
    """A few tokens (L <= SHORT_STEP) continuing a state, without gradients: steps 1-4 with prefix sums over
    the L new tokens added to the carried sums. About 40 operators against the chunked path's ~200, and the
    D×M state is read once for the outputs and updated once (in place under ``state_updates_in_place``):
    a DT rollout step feeds 3 tokens per environment, where per-operator overhead is most of the cost."""
    B, H, L, _ = Q.shape
    q, k = torch.sigmoid(Q.to(work)), torch.sigmoid(K.to(work))  # (B, H, L, D)
    v = V.to(work)
    t = state.t.to(work).view(B, 1, 1) + torch.arange(1, L + 1, dtype=work, device=Q.device)  # (B, 1, L)
    Kc = k.cumsum(2).add_(state.k_sum.to(work).unsqueeze(2))
    Qc = q.cumsum(2).add_(state.q_sum.to(work).unsqueeze(2))
    qe, ke = q + eps, k + eps
    dI = torch.linalg.vecdot(qe, Kc + eps)  # (B, H, L)
    dO = torch.linalg.vecdot(ke, Qc + eps)
    I, O = t / dI, t / dO
    P = (O.unsqueeze(-1) * k).cumsum(2).add_(state.sink_sum.to(work).unsqueeze(2))
    R = (I.unsqueeze(-1) * q).cumsum(2).add_(state.source_sum.to(work).unsqueeze(2))
    sink = torch.linalg.vecdot(qe, P + eps).div_(t)
    source = torch.linalg.vecdot(ke, R + eps).div_(t).clamp_(-clamp, clamp)
    e = torch.exp(source)
    Z = e.cumsum(-1).add_(state.z.to(work).unsqueeze(-1))
    vc = v * (t * e / Z).unsqueeze(-1)  # C_t v_t
    q2, k2, vc2 = q.reshape(B * H, L, -1), k.reshape(B * H, L, -1), vc.reshape(B * H, L, -1)
    kv = state.kv.to(work)
    kv2 = kv.view(B * H, *kv.shape[-2:])
    h = torch.bmm(q2, k2.transpose(1, 2)).tril_().bmm(vc2).baddbmm_(q2, kv2)  # q·(S_prev + Σ_{j≤t} k_j v'_j)
    if getattr(_LOCAL, "inplace", False):
        kv2.baddbmm_(k2.transpose(1, 2), vc2)
    else:
        kv = torch.baddbmm(kv2, k2.transpose(1, 2), vc2).view_as(kv)
    y = h.view(B, H, L, -1).mul_((torch.sigmoid(sink) / dI).unsqueeze(-1))
    new_state = FlowState(
        state.t + L,
        Kc[:, :, -1],
        Qc[:, :, -1],
        P[:, :, -1],
        R[:, :, -1],
        Z[..., -1],
        kv,
    )
    return y, new_state
