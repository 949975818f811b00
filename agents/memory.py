"""Episode memory: training a flow Decision Transformer on sequences that start at the episode's first step.

A memory model's rollout keeps one recurrent Flow-Attention state per environment from the episode's first
step (:class:`flowrl.agents.DTPolicy`, ``rollout="episode"``), and it is trained on exactly that computation,
in one of two ways (``DecisionTransformerConfig.memory_training``):

- ``"episodes"``: whole episodes (up to ``context`` steps, 3 tokens each) in one forward through the chunked
  causal kernel, gradient through every step. The plain model forward; nothing here is needed.
- ``"segments"``: a ``context``-step segment of an episode, whose forward starts from the exact state of the
  episode's steps before it. That state is computed here (:func:`prefix_state`) without gradient, so the
  gradient runs through the segment only, as in truncated backpropagation through time.

Both compute the same actions (a test checks that a segment's outputs and loss equal those of one forward over
the whole prefix, and its gradients too where the carried state keeps its gradient). They differ in cost and in
what the gradient reaches: see ``docs/memory.md`` for the measured trade-off.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowrl.ops import FlowState

from .stacking import is_stacked

__all__ = ["prefix_state", "segment_predictions"]


def prefix_state(trunk, x: Tensor, lengths: Tensor, *, all_rows: bool = False) -> list[FlowState]:
    """The causal flow trunk's per-block state after the first ``lengths[b]`` tokens of row b of ``x``.

    Args:
        trunk: a causal :class:`flowrl.models.Flowformer` with flow attention.
        x: token embeddings [B, L, dim].
        lengths: int [B] in [0, L], tokens per row that the state has seen.

    Returns:
        One :class:`FlowState` per block, rows in the order of ``x``; row b equals the state that
        ``trunk(x[b:b+1, :lengths[b]], return_state=True)`` returns. Rows are advanced together, the
        shortest leaving first (one trunk call per distinct length), so the cost is that of one forward
        over the prefixes. Gradients flow into the state when grad mode is on.
        all_rows: advance every row to the longest length instead (a row's state is taken when it reaches
            its own), for a seed-stacked trunk (:mod:`flowrl.agents.stacking`), whose calls need all S·B
            rows; up to twice the cost.
    """
    B, L, _ = x.shape
    lengths = torch.as_tensor(lengths, device=x.device).long()
    if lengths.shape != (B,) or (B and (lengths.min() < 0 or lengths.max() > L)):
        raise ValueError(f"prefix_state: lengths must be int [{B}] in [0, {L}], got {lengths.tolist()}")
    order = torch.argsort(lengths, stable=True)
    done: list[tuple[Tensor, list[FlowState]]] = []  # (rows, their per-block states)
    active, state, pos = order, None, 0
    if all_rows:
        active = torch.arange(B, device=x.device)
    for end in torch.unique(lengths).tolist():
        if end > pos:
            _, state = trunk(x[active, pos:end], state=state, return_state=True, select=slice(0, 0))
            pos = end
        leaving = lengths[active] == end
        if leaving.any():
            done.append((active[leaving], _rows(state, leaving, x, trunk)))
            if not all_rows:
                keep = ~leaving
                active = active[keep]
                state = None if state is None else [s.select(keep) for s in state]
    rows = torch.cat([r for r, _ in done])
    inverse = torch.empty_like(rows)
    inverse[rows] = torch.arange(B, device=x.device)
    depth = len(trunk.blocks)
    return [
        FlowState(*(torch.cat([st[i][f] for _, st in done])[inverse] for f in range(len(FlowState._fields))))
        for i in range(depth)
    ]


def _rows(state: list[FlowState] | None, rows: Tensor, x: Tensor, trunk) -> list[FlowState]:
    """The states of ``rows`` (a bool mask); an empty state where nothing has been seen yet."""
    if state is not None:
        return [s.select(rows) for s in state]
    c = trunk.config
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, Dh = int(rows.sum()), c.dim // c.heads
    return [FlowState.zeros(n, c.heads, Dh, Dh, dtype=work, device=x.device) for _ in trunk.blocks]


def segment_predictions(model, states, actions, returns_to_go, timesteps, starts, segment: int, *, carry_grad=False):
    """Predicted actions for the ``segment`` steps of each row from step ``starts[b]`` on.

    Args:
        model: a :class:`flowrl.agents.models.DecisionTransformer` with flow attention.
        states, actions, returns_to_go, timesteps: [B, T, ·] anchored at the episode start (position i is
            step i, as in :class:`flowrl.envs.EpisodeBatch`), right-padded.
        starts: int [B], the first step of each row's segment.
        segment: steps per segment; positions past T repeat the last one (padding after the real steps).
        carry_grad: let the gradient flow into the state of the steps before the segment (then the
            gradients equal those of one forward over the whole sequence); default: the state is computed
            without gradient.

    Returns:
        (predicted actions [B, segment, act_dim], the step index of each [B, segment]).
    """
    B, T = timesteps.shape
    starts = torch.as_tensor(starts, device=timesteps.device).long()
    inner = getattr(model, "module", model)  # a DistributedDataParallel wrapper: the prefix needs no gradient sync
    with torch.set_grad_enabled(carry_grad and torch.is_grad_enabled()):
        x = inner.embed(states, actions, returns_to_go, timesteps)  # (B, 3T, dim)
        state = prefix_state(inner.trunk, x, 3 * starts, all_rows=is_stacked(inner))
    steps = (starts[:, None] + torch.arange(segment, device=starts.device)).clamp_max(T - 1)  # (B, segment)

    def take(v: Tensor) -> Tensor:
        return v.gather(1, steps.view(B, segment, *[1] * (v.dim() - 2)).expand(B, segment, *v.shape[2:]))

    pred = model(take(states), take(actions), take(returns_to_go), take(timesteps), state=state)
    return pred, steps
