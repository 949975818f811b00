"""``flow_attention``: checks its inputs, then runs the code path that fits (see :mod:`flowrl.ops.flow`)."""

from __future__ import annotations

import torch
from torch import Tensor

from flowrl.ops.flow.chunk import auto_chunk
from flowrl.ops.flow.ops import SUPPORTED_DTYPES, flow_causal, flow_causal_step, flow_noncausal, torch_causal_step
from flowrl.ops.flow.precision import no_autocast, value_dtype, work_dtype
from flowrl.ops.flow.scan import causal_scan
from flowrl.ops.flow.state import MAX_CLAMP, FlowState, check_state, shape_error, updates_in_place

__all__ = ["flow_attention"]


def check_inputs(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise shape_error(name, x.shape, "a 4-d tensor [B, H, L, D]")
    B, H, L, D = q.shape
    if k.shape[0] != B or k.shape[1] != H or k.shape[3] != D:
        raise shape_error("k", k.shape, f"[{B}, {H}, S, {D}] to match q {tuple(q.shape)}")
    S = k.shape[2]
    if v.shape[0] != B or v.shape[1] != H or v.shape[2] != S:
        raise shape_error("v", v.shape, f"[{B}, {H}, {S}, M] to match k {tuple(k.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"flow_attention: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")
    if q.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in SUPPORTED_DTYPES)
        raise ValueError(f"flow_attention: q, k, v have dtype {q.dtype}; supported: {names}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"flow_attention: q, k, v are on different devices ({q.device}, {k.device}, {v.device})")


def _check_on(device: torch.device, what: str, tensors) -> None:
    for x in tensors:
        if x is not None and x.device != device:
            raise ValueError(f"flow_attention: {what} is on {x.device} but q, k, v are on {device}")


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
    check_inputs(q, k, v)
    B, H, L, D = q.shape
    S, M = k.shape[2], v.shape[3]
    if not (0.0 < clamp <= MAX_CLAMP):
        raise ValueError(f"flow_attention: clamp must be in (0, {MAX_CLAMP}], got {clamp}")
    if eps < 0:
        raise ValueError(f"flow_attention: eps must be >= 0, got {eps}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"flow_attention: chunk must be >= 1, got {chunk}")
    out_dtype = q.dtype
    work = work_dtype(q.dtype)

    if causal:
        if S != L:
            raise shape_error("k", (B, H, S, D), f"[{B}, {H}, {L}, {D}]: causal attention needs S == L")
        if key_padding_mask is not None or query_padding_mask is not None:
            raise ValueError(
                "flow_attention: padding masks are for non-causal attention; with causal attention pad "
                "on the right (padding after the last real token never reaches earlier outputs)"
            )
        if state is not None:
            check_state(state, B, H, D, M)
            _check_on(q.device, "state", state)
        if L == 0:  # an empty continuation changes nothing
            y = v.new_zeros(B, H, 0, M).to(out_dtype)
            if state is None:
                state = FlowState.zeros(B, H, D, M, dtype=work, device=q.device)
            return (y, state) if return_state else y
        chunk = auto_chunk(L) if chunk is None else chunk
        lowp = value_dtype(q, work)
        with no_autocast(q.device.type):  # precision is chosen here: `work` for normalisers, `lowp` for values
            y, new_state = causal_dispatch(q, k, v, eps, clamp, state, return_state, chunk, work, lowp)
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
        _check_on(q.device, name, (mask,))
    with no_autocast(q.device.type):
        return flow_noncausal(q, k, v, key_padding_mask, query_padding_mask, eps, clamp)


def causal_dispatch(q, k, v, eps, clamp, state, return_state, chunk, work, lowp=None):
    """The causal code path: the chunked op (gradients into q, k, v; a given state is a constant), the step op
    (no gradients, a state to continue or to return), or autograd through the scans (gradients into or out
    of a carried state). Returns (y, new state or None)."""
    state_grad = state is not None and any(x.requires_grad for x in state)
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad or state_grad)
    if not needs_grad and (state is not None or return_state):
        if updates_in_place():  # rollouts and decoding, eagerly: the state's D×M matrix is updated in place
            y, new_state = torch_causal_step(q, k, v, state, eps, clamp, chunk)
        else:
            y, *fields = flow_causal_step(q, k, v, list(state) if state is not None else [], eps, clamp, chunk)
            new_state = FlowState(*fields)
        return y, (new_state if return_state else None)
    if not (return_state or state_grad):
        return flow_causal(q, k, v, list(state) if state is not None else [], eps, clamp, chunk, lowp), None
    # Gradients into or out of a state: plain autograd through the scan form.
    q, k, v = (x.to(work) for x in (q, k, v))
    return causal_scan(torch.sigmoid(q), torch.sigmoid(k), v, eps, clamp, state, return_state, chunk)
