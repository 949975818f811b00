"""Causal Flow-Attention continuing a carried state by a few tokens, without gradients: one token (recurrent
decoding) or up to :data:`SHORT_STEP` tokens (a Decision-Transformer rollout step)."""

from __future__ import annotations

import torch

from flowrl.ops.flow.state import FlowState, updates_in_place

__all__ = ["SHORT_STEP", "recurrent_step", "short_step"]

SHORT_STEP = 16  # continuations of up to this many tokens take the lean stateful path (inference only)


def recurrent_step(Q, K, V, eps, clamp, state: FlowState, work):
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
    if updates_in_place():
        kv = state.kv.to(work)
        kv.view(-1, *kv.shape[-2:]).baddbmm_(kt.reshape(-1, *kt.shape[-2:]), vc.reshape(-1, *vc.shape[-2:]))
    else:
        kv = torch.matmul(kt, vc).add_(state.kv.to(work))  # (B, H, D, M)
    y = (q @ kv).mul_((torch.sigmoid(sink) / dI).unsqueeze(-1))
    new_state = FlowState(
        state.t + 1, k_sum.squeeze(2), q_sum.squeeze(2), sink_sum.squeeze(2), source_sum.squeeze(2), z.squeeze(-1), kv
    )
    return y, new_state


def short_step(Q, K, V, eps, clamp, state: FlowState, work):
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
    if updates_in_place():
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
