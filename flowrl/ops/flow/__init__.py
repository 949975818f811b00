"""Flow-Attention (Flowformer, Wu et al., ICML 2022): one module per code path, each beside its naive twin.

Non-causal attention follows the paper's equations; causal attention follows the reference causal form
(prefix sums normalised by position), computed chunk by chunk as a causal linear attention whose score matrix
also yields every flow normaliser, so that peak memory is linear in L and a sequence can be carried across
calls through :class:`FlowState` (down to one token at a time: recurrent O(1)-per-token decoding).

The maths, per batch and head, with q_t = σ(Q_t), k_t = σ(K_t), t the 1-based position, ε = eps, c = clamp:

1. Kc_t = Σ_{j≤t} k_j, Qc_t = Σ_{j≤t} q_j; incoming I_t = t / ((q_t+ε)·(Kc_t+ε)),
   outgoing O_t = t / ((k_t+ε)·(Qc_t+ε)).
2. P_t = Σ_{j≤t} O_j k_j, R_t = Σ_{j≤t} I_j q_j; conserved sink Î_t = (q_t+ε)·(P_t+ε) / t,
   conserved source Ô_t = clamp((k_t+ε)·(R_t+ε) / t, −c, c).
3. Z_t = Σ_{j≤t} exp(Ô_j); competition C_t = t·exp(Ô_t) / Z_t; allocation A_t = σ(Î_t).
4. y_t = A_t · q′_t·S_t with q′_t = q_t / ((q_t+ε)·(Kc_t+ε)) and S_t = Σ_{j≤t} k_j (C_j v_j)ᵀ.

The modules:

- :mod:`~flowrl.ops.flow.attention` — :func:`flow_attention`: input checks, then the code path below.
- :mod:`~flowrl.ops.flow.ops` — every path as a registered custom op (``torch.ops.flowrl.*``) with autograd and
  shape functions, and the choice of implementation for the causal op (docs/kernels.md).
- :mod:`~flowrl.ops.flow.native` — the causal op's CPU implementation (``native_chunk.cpp``).
- :mod:`~flowrl.ops.flow.triton_chunk` — the causal op's CUDA implementation (Triton chunk kernels).
- :mod:`~flowrl.ops.flow.chunk` — causal, chunked forward and hand-written backward in torch operators.
- :mod:`~flowrl.ops.flow.noncausal` — non-causal forward and hand-written backward, with padding masks.
- :mod:`~flowrl.ops.flow.recurrent` — a state continued by a few tokens without gradients (decoding, rollouts).
- :mod:`~flowrl.ops.flow.scan` — autograd through the scans, for gradients into or out of a carried state.
- :mod:`~flowrl.ops.flow.state` — :class:`FlowState` and :func:`state_updates_in_place`.
- :mod:`~flowrl.ops.flow.precision` — which precision each part runs in.
- :mod:`~flowrl.ops.flow.naive` — the slow, obviously-correct twins every path is tested against.
"""

from flowrl.ops.flow.attention import flow_attention
from flowrl.ops.flow.scan import causal_linear_attention
from flowrl.ops.flow.state import FlowState, state_updates_in_place

__all__ = ["FlowState", "causal_linear_attention", "flow_attention", "state_updates_in_place"]
