"""Non-causal Flow-Attention (the paper's equations): the fast forward and its hand-written backward, with
key and query padding masks."""

from __future__ import annotations

import torch

__all__ = ["noncausal_forward", "noncausal_backward"]

# ---------------------------------------------------------------------------------------------------------
# Fast non-causal path: the same expansion of the ε products turns every normaliser into a (2, D) @ (D, L)
# product with whole-sequence D-vectors, and the backward into two L×M @ M×D products plus rank-4 terms.
# ---------------------------------------------------------------------------------------------------------


def noncausal_forward(Q, K, V, eps, clamp, key_padding_mask, query_padding_mask, work, save):
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


def noncausal_backward(gy, saved, eps, clamp):
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
