"""Causal Flow-Attention, chunked: the fast forward and its hand-written backward, in torch operators.

Used for training (gradients into q, k, v) and for long continuations of a state without gradients. The
sequence is cut into equal chunks; within a chunk one score matrix q kᵀ gives the value products and every
normaliser, across chunks D-vectors and the D×M state are carried (see the comment below).
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowrl.ops.flow.state import FlowState, updates_in_place

__all__ = ["DEFAULT_CHUNK", "auto_chunk", "chunk_len", "causal_forward", "causal_backward"]

DEFAULT_CHUNK = 64


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


def auto_chunk(L: int) -> int:
    # One chunk up to 128 tokens (no carried state at all); beyond, 64 measured fastest on CPU
    # (the C×C products grow with C, the carried D×M states with L/C).
    return L if L <= 128 else DEFAULT_CHUNK


def chunk_len(L: int, chunk: int) -> int:
    """Equal chunks of at most ``chunk`` tokens, so that the zero padding is less than one per chunk."""
    n = -(-L // min(chunk, L))
    return -(-L // n)


def chunk_cumsum(x: Tensor, dim: int, *, reverse: bool = False) -> tuple[Tensor, Tensor]:
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
    assert carry is not None  # n >= 1 here: an empty dim has no elements, so it takes the cumsum path above
    return x, carry


def rev_cumsum(x: Tensor) -> Tensor:
    """Σ over this and later entries along the last dimension."""
    return x.flip(-1).cumsum(-1).flip(-1)


def causal_forward(Q, K, V, eps, clamp, state, chunk, work, need_state, save, lowp=None):
    B, H, L, D = Q.shape
    M = V.shape[-1]
    C = chunk_len(L, chunk)
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
        c0, c_end = chunk_cumsum(sums, -2)  # [Qc⁰, Kc⁰] entering each chunk
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
        p0, p_end = chunk_cumsum(psum, -2)  # [P⁰, R⁰]
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
            if need_state and updates_in_place():
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
        KV0, kv_end = chunk_cumsum(kvsum, 2)
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


def causal_backward(gy, saved, eps, clamp, L, C):
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
    if lp is not None:  # the value products in low precision (see causal_forward)
        lowp = lp[1].dtype
        qkl = lp[0].view(2, B, H, N, C, D) if lp[0] is not None else None
        ghl = ghc.to(lowp)
        gvp = (lp[1].transpose(-1, -2) @ ghl).to(work)
    else:
        gvp = Sl.transpose(-1, -2) @ ghc  # ∂/∂(C_j v_j) within the chunk, (B, H, N, C, M)
    gO = (row(alpha) @ Sl).view(B, H, Lp)  # Σ_{i≥j} α_i q_i·k_j within the chunk
    if cross:
        if lp is None:
            GN, _ = chunk_cumsum(qc.transpose(-1, -2) @ ghc, 2, reverse=True)  # Σ_later q ghᵀ, (B, H, N, D, M)
            gvp.view(X, C, M).baddbmm_(kc.reshape(X, C, D), GN.view(X, D, M))
        else:
            GN, _ = chunk_cumsum((qkl[0].transpose(-1, -2) @ ghl).to(work), 2, reverse=True)
            gvp += qkl[1] @ GN.to(lowp)
        AQ, _ = chunk_cumsum(row(alpha) @ qc, 2, reverse=True)  # Σ_later α q, (B, H, N, 1, D)
        gO += (AQ @ kc.transpose(-1, -2)).view(B, H, Lp)
    gvp = gvp.view(B, H, Lp, M)
    gcomp = torch.linalg.vecdot(gvp, vp) / comp
    gZ = -gcomp * comp / Z
    ge = gcomp * t / Z + rev_cumsum(gZ)
    beta = ge * e * ((u >= -clamp) & (u <= clamp)) / t  # ∂/∂Ô (through the clamp), over t
    gI = (row(beta) @ Su.transpose(-1, -2)).view(B, H, Lp)  # Σ_{i≥j} β_i q_j·k_i within the chunk
    BK = None
    if cross:
        BK, _ = chunk_cumsum(row(beta) @ kc, 2, reverse=True)  # Σ_later β k
        gI += (BK @ qc.transpose(-1, -2)).view(B, H, Lp)
    rab = rev_cumsum(torch.stack((alpha, beta)))
    gO += eps * rs[1] * rab[0]
    gI += eps * rs[0] * rab[1]
    gamma = -(gw * w + gI * I) / dI  # ∂/∂dI
    delta = -gO * O / dO  # ∂/∂dO
    rgd = rev_cumsum(torch.stack((gamma, delta)))

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
        GQ, _ = chunk_cumsum(row(gamma) @ qc, 2, reverse=True)  # Σ_later γ q
        DK, _ = chunk_cumsum(row(delta) @ kc, 2, reverse=True)  # Σ_later δ k
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
