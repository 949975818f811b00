"""The flow op's code paths as registered custom ops (``torch.ops.flowrl.*``), with autograd and shape functions.

``torch.compile`` and ``torch.export`` see each op as one node (no graph break, no tracing into the kernels);
eager calls go through the same ops. The ops:

- ``flow_causal(q, k, v, state, eps, clamp, chunk, value_dtype) -> y`` — causal, chunked; ``state`` is an
  empty list or the seven tensors of a :class:`~flowrl.ops.FlowState` to continue (a constant: no gradient
  flows into it). Its autograd formula is ``flow_causal_backward``, which recomputes the forward's
  intermediates (nothing but q, k, v is saved, as in fla's chunk kernels).
- ``flow_causal_backward(gy, q, k, v, state, eps, clamp, chunk, value_dtype) -> (gq, gk, gv)``.
- ``flow_noncausal(q, k, v, key_padding_mask, query_padding_mask, eps, clamp) -> y`` and its backward
  ``flow_noncausal_backward``.
- ``flow_causal_step(q, k, v, state, eps, clamp, chunk) -> [y, *new_state]`` — continue a state (or start one:
  an empty list) without gradients and return the new one: recurrent decoding, rollouts, prompts.

q, k: [B, H, L, D] and v: [B, H, L, M] before the feature map; y: [B, H, L, M] in q's dtype. ``value_dtype``
is the precision of the value products (q′·k v′ᵀ and their gradients) that the torch implementation uses
under autocast (None: the working precision); the normalisers always run in float32 or float64.

Each op picks its implementation per call: ``flow_causal`` and its backward run the native kernel
(:mod:`flowrl.ops.flow.native`) on CPU where it is built and supports the call (float32, float64, bfloat16; no
carried state), the Triton chunk kernels (:mod:`flowrl.ops.flow.triton_chunk`) on CUDA where Triton is
installed and supports the call (float32, bfloat16, float16; no carried state; D ≤ 256), else torch operators
(the chunked forward and hand-written backward of :mod:`flowrl.ops.flow.chunk`); the other ops run torch
operators (:mod:`flowrl.ops.flow.noncausal`, :mod:`flowrl.ops.flow.recurrent`). :func:`implementation` forces
one (tests, benchmarks; "triton" also runs CPU tensors under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from flowrl.ops.flow.chunk import causal_backward, causal_forward, chunk_len
from flowrl.ops.flow.noncausal import noncausal_backward, noncausal_forward
from flowrl.ops.flow.precision import no_autocast, work_dtype
from flowrl.ops.flow.recurrent import SHORT_STEP, recurrent_step, short_step
from flowrl.ops.flow.state import FlowState

__all__ = ["OPS", "SUPPORTED_DTYPES", "IMPLEMENTATIONS", "implementation", "chosen_implementation", "torch_causal_step"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
IMPLEMENTATIONS = ("torch", "native", "triton")
_forced: list[str] = []  # a stack: implementation() blocks may nest


@contextlib.contextmanager
def implementation(name: str) -> Iterator[None]:
    """Within this block the causal op runs ``name`` ("torch", "native" or "triton"); a call that implementation
    cannot run raises RuntimeError instead of falling back."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"flow op implementation must be one of {IMPLEMENTATIONS}, got {name!r}")
    _forced.append(name)
    try:
        yield
    finally:
        _forced.pop()


def _module(name: str):
    if name == "native":
        from flowrl.ops.flow import native

        return native
    from flowrl.ops.flow import triton_chunk

    return triton_chunk


_DEFAULT = {"cpu": "native", "cuda": "triton"}  # per device; anything else runs torch operators


def chosen_implementation(op: str, q: Tensor, state: Sequence[Tensor] = ()) -> str:
    """The implementation ``op`` ("causal", "noncausal", "step") runs for inputs like ``q`` (see the module
    docstring)."""
    if _forced:
        name = _forced[-1]
        reason = _module(name).unsupported(op, q, state) if name != "torch" else None
        if reason:
            raise RuntimeError(f"flow op: the {name} implementation cannot run this call ({reason})")
        return name
    name = _DEFAULT.get(q.device.type, "torch")
    if name == "torch" or _module(name).unsupported(op, q, state):
        return "torch"
    return name


def _dense(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Every op returns contiguous tensors (what its shape function promises)."""
    return x.to(dtype).contiguous()


def _state(state: Sequence[Tensor]) -> FlowState | None:
    return FlowState(*state) if len(state) else None


# ------------------------------------------------------------------------------------------------ causal
def _torch_causal(q, k, v, state, eps, clamp, chunk, value_dtype):
    y, _, _ = causal_forward(q, k, v, eps, clamp, _state(state), chunk, work_dtype(q.dtype), False, False, value_dtype)
    return y.to(q.dtype).contiguous()


def _torch_causal_backward(gy, q, k, v, state, eps, clamp, chunk, value_dtype):
    work = work_dtype(q.dtype)
    L = q.shape[2]
    _, _, saved = causal_forward(q, k, v, eps, clamp, _state(state), chunk, work, False, True, value_dtype)
    with no_autocast(q.device.type):
        gq, gk, gv = causal_backward(gy, saved, eps, clamp, L, chunk_len(L, chunk))
    return _dense(gq, q.dtype), _dense(gk, k.dtype), _dense(gv, v.dtype)


@torch.library.custom_op("flowrl::flow_causal", mutates_args=())
def flow_causal(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: list[Tensor],
    eps: float,
    clamp: float,
    chunk: int,
    value_dtype: torch.dtype | None,
) -> Tensor:
    impl = chosen_implementation("causal", q, state)
    if impl == "native":
        return _module(impl).causal_forward(q, k, v, eps, clamp, chunk)
    if impl == "triton":
        return _module(impl).causal_forward(q, k, v, eps, clamp, chunk, value_dtype)
    return _torch_causal(q, k, v, state, eps, clamp, chunk, value_dtype)


@flow_causal.register_fake
def _(q, k, v, state, eps, clamp, chunk, value_dtype):
    return q.new_empty((*q.shape[:3], v.shape[3]))


@torch.library.custom_op("flowrl::flow_causal_backward", mutates_args=())
def flow_causal_backward(
    gy: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    state: list[Tensor],
    eps: float,
    clamp: float,
    chunk: int,
    value_dtype: torch.dtype | None,
) -> tuple[Tensor, Tensor, Tensor]:
    impl = chosen_implementation("causal", q, state)
    if impl == "native":
        return _module(impl).causal_backward(gy, q, k, v, eps, clamp, chunk)
    if impl == "triton":
        return _module(impl).causal_backward(gy, q, k, v, eps, clamp, chunk, value_dtype)
    return _torch_causal_backward(gy, q, k, v, state, eps, clamp, chunk, value_dtype)


@flow_causal_backward.register_fake
def _(gy, q, k, v, state, eps, clamp, chunk, value_dtype):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _causal_setup(ctx, inputs, output):
    q, k, v, state, eps, clamp, chunk, value_dtype = inputs
    ctx.save_for_backward(q, k, v, *state)
    ctx.args = (eps, clamp, chunk, value_dtype)


def _causal_autograd(ctx, gy):
    q, k, v, *state = ctx.saved_tensors
    gq, gk, gv = flow_causal_backward(gy.contiguous(), q, k, v, state, *ctx.args)
    return gq, gk, gv, [None] * len(state), None, None, None, None  # the state is a constant


flow_causal.register_autograd(_causal_autograd, setup_context=_causal_setup)


# --------------------------------------------------------------------------------------------- non-causal
@torch.library.custom_op("flowrl::flow_noncausal", mutates_args=())
def flow_noncausal(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    query_padding_mask: Tensor | None,
    eps: float,
    clamp: float,
) -> Tensor:
    y, _ = noncausal_forward(q, k, v, eps, clamp, key_padding_mask, query_padding_mask, work_dtype(q.dtype), False)
    return y.to(q.dtype)


@flow_noncausal.register_fake
def _(q, k, v, key_padding_mask, query_padding_mask, eps, clamp):
    return q.new_empty((*q.shape[:3], v.shape[3]))


@torch.library.custom_op("flowrl::flow_noncausal_backward", mutates_args=())
def flow_noncausal_backward(
    gy: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    key_padding_mask: Tensor | None,
    query_padding_mask: Tensor | None,
    eps: float,
    clamp: float,
) -> tuple[Tensor, Tensor, Tensor]:
    work = work_dtype(q.dtype)
    _, saved = noncausal_forward(q, k, v, eps, clamp, key_padding_mask, query_padding_mask, work, True)
    with no_autocast(q.device.type):
        gq, gk, gv = noncausal_backward(gy, saved, eps, clamp)
    return _dense(gq, q.dtype), _dense(gk, k.dtype), _dense(gv, v.dtype)


@flow_noncausal_backward.register_fake
def _(gy, q, k, v, key_padding_mask, query_padding_mask, eps, clamp):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _noncausal_setup(ctx, inputs, output):
    q, k, v, kpm, qpm, eps, clamp = inputs
    ctx.save_for_backward(q, k, v)
    ctx.masks = (kpm, qpm)
    ctx.args = (eps, clamp)


def _noncausal_autograd(ctx, gy):
    q, k, v = ctx.saved_tensors
    gq, gk, gv = flow_noncausal_backward(gy.contiguous(), q, k, v, *ctx.masks, *ctx.args)
    return gq, gk, gv, None, None, None, None


flow_noncausal.register_autograd(_noncausal_autograd, setup_context=_noncausal_setup)


# ------------------------------------------------------------------------------------------------- step
def torch_causal_step(q, k, v, state: FlowState | None, eps, clamp, chunk) -> tuple[Tensor, FlowState]:
    """Continue ``state`` (None: a new sequence) by the L tokens of q, k, v without gradients (torch operators):
    one token, a few (<= SHORT_STEP) or a chunked pass. Returns y [B, H, L, M] in the working dtype and the
    new state (its D×M matrix updated in place inside :func:`~flowrl.ops.state_updates_in_place`)."""
    work = work_dtype(q.dtype)
    if state is not None and q.shape[2] == 1:
        return recurrent_step(q, k, v, eps, clamp, state, work)
    if state is not None and q.shape[2] <= SHORT_STEP:
        return short_step(q, k, v, eps, clamp, state, work)
    y, new_state, _ = causal_forward(q, k, v, eps, clamp, state, chunk, work, True, False)
    return y, new_state


@torch.library.custom_op("flowrl::flow_causal_step", mutates_args=())
def flow_causal_step(
    q: Tensor, k: Tensor, v: Tensor, state: list[Tensor], eps: float, clamp: float, chunk: int
) -> list[Tensor]:
    y, new_state = torch_causal_step(q, k, v, _state(state), eps, clamp, chunk)
    # all new tensors (an op's outputs never alias its inputs), contiguous like the shape function's
    return [_dense(y, q.dtype), *(x.contiguous() for x in new_state)]


@flow_causal_step.register_fake
def _(q, k, v, state, eps, clamp, chunk):
    B, H, L, D = q.shape
    M = v.shape[3]
    work = work_dtype(q.dtype)
    new = lambda *s: q.new_empty(s, dtype=work)  # noqa: E731
    t = q.new_empty((B,), dtype=torch.long)
    return [
        q.new_empty((B, H, L, M)),
        t,
        new(B, H, D),
        new(B, H, D),
        new(B, H, D),
        new(B, H, D),
        new(B, H),
        new(B, H, D, M),
    ]


OPS: dict[str, Callable] = {
    "causal": flow_causal,
    "causal_backward": flow_causal_backward,
    "noncausal": flow_noncausal,
    "noncausal_backward": flow_noncausal_backward,
    "step": flow_causal_step,
}
