"""Batch samplers over a :class:`TrajectoryDataset`: K-step context windows for sequence models and
single transitions for behaviour cloning. Each batch is built with array indexing (one gather per
field), never a Python loop per sample.

Padding convention (shared with the model side): **right padding**. A window that reaches the end of its
episode holds its real tokens first (positions ``0..L-1``) and padding after (``L..K-1``): zeros in
every field, timestep 0, mask 0. With causal attention, padding after the real tokens never influences
them, so the model needs no special handling beyond ignoring masked positions in the loss.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from flowrl.errors import InputError

from .dataset import TrajectoryDataset

__all__ = ["ContextBatch", "ContextSampler", "EpisodeBatch", "EpisodeSampler", "TransitionBatch", "TransitionSampler"]


class ContextBatch(NamedTuple):
    """B windows of K steps (numpy arrays; padding after the real tokens, see module doc)."""

    states: np.ndarray
    """float32 [B, K, obs_dim], normalized with the dataset's state mean/std when the sampler does."""
    actions: np.ndarray
    """float32 [B, K, act_dim]."""
    rewards: np.ndarray
    """float32 [B, K, 1], raw rewards."""
    returns_to_go: np.ndarray
    """float32 [B, K, 1], undiscounted return from this step to the episode end, times reward_scale."""
    timesteps: np.ndarray
    """int64 [B, K], step index within the episode (0 at padding)."""
    mask: np.ndarray
    """float32 [B, K], 1 for real tokens, 0 for padding."""


class ContextSampler:
    """Random K-step windows. ``anchor="start"`` (the Decision Transformer paper's): an episode is drawn
    with probability proportional to its length, then a start step uniformly in ``[0, len - 1]``; a window
    that runs past the episode end is truncated there. ``anchor="end"`` (d3rlpy's): an end step uniform over
    all transitions, the window the K steps up to it, truncated at the episode start, so an early step is
    seen with exactly the history a rollout has at it. Short windows are right-padded either way.

    Args:
        dataset: the trajectories.
        context: K, steps per window (>= 1).
        reward_scale: multiplies returns-to-go (e.g. 1e-3 for MuJoCo, as in the DT paper).
        seed: seeds a ``numpy.random.Generator``; the same seed gives the same batches.
        normalize_states: subtract ``dataset.state_mean`` and divide by ``dataset.state_std``.
        anchor: "start" or "end", which end of the window is drawn uniformly.

    Memory: nothing per window is stored; one batch costs B·K rows of each field.
    """

    def __init__(
        self,
        dataset: TrajectoryDataset,
        context: int,
        *,
        reward_scale: float,
        seed: int,
        normalize_states: bool = True,
        anchor: str = "start",
    ) -> None:
        if int(context) < 1:
            raise InputError(f"context must be >= 1, got {context}")
        if anchor not in ("start", "end"):
            raise InputError(f"window anchor must be 'start' or 'end', got {anchor!r}")
        if not np.isfinite(reward_scale):
            raise InputError(f"reward_scale must be finite, got {reward_scale}")
        self.dataset = dataset
        self.context = int(context)
        self.reward_scale = float(reward_scale)
        self.normalize_states = normalize_states
        self.anchor = anchor
        self.rng = np.random.default_rng(seed)
        self._offsets = np.arange(self.context, dtype=np.int64)

    def sample(self, batch_size: int) -> ContextBatch:
        """A batch of ``batch_size`` random windows."""
        ds = self.dataset
        # A uniformly drawn row lands in episode e with probability len(e)/N: length-proportional episode
        # choice without building a probability table.
        rows = self.rng.integers(0, ds.num_transitions, size=int(batch_size))
        episodes = np.searchsorted(ds.episode_starts, rows, side="right") - 1
        if self.anchor == "end":  # the drawn row is the window's last step
            last = rows - ds.episode_starts[episodes]
            starts = np.maximum(last - (self.context - 1), 0)
            return self._gather(episodes, starts, last + 1)
        starts = self.rng.integers(0, ds.episode_lengths[episodes])
        return self._gather(episodes, starts)

    def windows(self, episode_idx: np.ndarray, start_idx: np.ndarray) -> ContextBatch:
        """The deterministic windows starting at step ``start_idx[b]`` of episode ``episode_idx[b]``.

        Args:
            episode_idx: int [B], episode indices in ``[0, num_episodes)``.
            start_idx: int [B], step within each episode, in ``[0, episode_length)``.
        """
        ep = np.asarray(episode_idx, dtype=np.int64).reshape(-1)
        st = np.asarray(start_idx, dtype=np.int64).reshape(-1)
        if ep.shape != st.shape:
            raise ValueError(f"episode_idx and start_idx must have the same length, got {ep.size} and {st.size}")
        if ep.size and (ep.min() < 0 or ep.max() >= self.dataset.num_episodes):
            raise ValueError(f"episode index out of range [0, {self.dataset.num_episodes})")
        if ep.size and (st.min() < 0 or (st >= self.dataset.episode_lengths[ep]).any()):
            raise ValueError("start index out of range [0, episode length)")
        return self._gather(ep, st)

    def _gather(self, episodes: np.ndarray, starts: np.ndarray, stops: np.ndarray | None = None) -> ContextBatch:
        """Windows from ``starts`` to ``stops`` (exclusive; default: the episode ends), at most K steps."""
        steps = starts[:, None] + self._offsets  # [B, K] step within the episode
        stops = self.dataset.episode_lengths[episodes] if stops is None else stops
        real = steps < stops[:, None]  # [B, K]
        return ContextBatch(*_gather(self.dataset, episodes, steps, real, self.normalize_states, self.reward_scale))


def _gather(ds: TrajectoryDataset, episodes, steps, real, normalize: bool, reward_scale: float) -> tuple:
    """(states, actions, rewards, returns_to_go, timesteps, mask) of ``steps`` [B, T] of ``episodes`` [B]; the
    positions where ``real`` [B, T] is False are padding (zeros, timestep 0, mask 0)."""
    # Padding positions point at the row's first step (always real) and are zeroed after the gather.
    rows = ds.episode_starts[episodes][:, None] + np.where(real, steps, steps[:, :1])  # [B, T]
    realf = real.astype(np.float32)
    states = ds.observations[rows]  # [B, T, obs_dim]
    if normalize:
        states = (states - ds.state_mean) / ds.state_std
    states *= realf[..., None]
    actions = ds.actions[rows] * realf[..., None]
    rewards = (ds.rewards[rows] * realf)[..., None]
    rtg = (ds.returns_to_go[rows] * np.float32(reward_scale) * realf)[..., None]
    timesteps = np.where(real, steps, 0)
    return states, actions, rewards, rtg, timesteps, realf


class EpisodeBatch(NamedTuple):
    """B sequences anchored at their episode's first step: position i of a row is step i of its episode.

    The fields are those of :class:`ContextBatch` ([B, T, ·], right padding, T = the batch's longest
    sequence), and ``mask`` 1 only on the steps that carry loss: from ``starts`` to the sequence end.
    """

    states: np.ndarray
    """float32 [B, T, obs_dim]."""
    actions: np.ndarray
    """float32 [B, T, act_dim]."""
    rewards: np.ndarray
    """float32 [B, T, 1], raw rewards."""
    returns_to_go: np.ndarray
    """float32 [B, T, 1], times reward_scale."""
    timesteps: np.ndarray
    """int64 [B, T], the step index (0 at padding)."""
    mask: np.ndarray
    """float32 [B, T], 1 on the real steps from ``starts`` on (the ones that carry loss), else 0."""
    starts: np.ndarray
    """int64 [B], the first step that carries loss (0 for whole episodes); the steps before it are the
    history a segment continues from."""


class EpisodeSampler:
    """Sequences for episode-memory models, always from the episode's first step (see :class:`EpisodeBatch`).

    ``segments=False``: whole episodes, drawn uniformly, every step carries loss; ``context`` must cover the
    longest episode. ``segments=True``: a ``context``-step segment per row, drawn as :class:`ContextSampler`
    draws its windows (episode ∝ length, start uniform), preceded by the episode's steps before it.

    Args:
        dataset: the trajectories.
        context: the longest episode (``segments=False``) or the segment length, in steps.
        segments: see above.
        reward_scale, seed, normalize_states: as :class:`ContextSampler`.
    """

    def __init__(
        self,
        dataset: TrajectoryDataset,
        context: int,
        *,
        segments: bool,
        reward_scale: float,
        seed: int,
        normalize_states: bool = True,
    ) -> None:
        if int(context) < 1:
            raise InputError(f"context must be >= 1, got {context}")
        longest = int(dataset.episode_lengths.max())
        if not segments and longest > context:
            raise InputError(
                f"the dataset has episodes of up to {longest} steps but a memory model trained on whole "
                f"episodes has context={context}; set context >= {longest} (or train on segments)"
            )
        self.dataset, self.context, self.segments = dataset, int(context), bool(segments)
        self.reward_scale, self.normalize_states = float(reward_scale), normalize_states
        self.rng = np.random.default_rng(seed)

    def sample(self, batch_size: int) -> EpisodeBatch:
        """A batch of ``batch_size`` random sequences."""
        ds = self.dataset
        if self.segments:
            rows = self.rng.integers(0, ds.num_transitions, size=int(batch_size))
            episodes = np.searchsorted(ds.episode_starts, rows, side="right") - 1
            starts = self.rng.integers(0, ds.episode_lengths[episodes])
        else:
            episodes = self.rng.integers(0, ds.num_episodes, size=int(batch_size))
            starts = np.zeros(len(episodes), np.int64)
        return self.sequences(episodes, starts)

    def sequences(self, episode_idx: np.ndarray, start_idx: np.ndarray) -> EpisodeBatch:
        """The sequences of episodes ``episode_idx`` [B] with loss from step ``start_idx`` [B] on, for
        ``context`` steps (segments) or to the episode end (whole episodes)."""
        ds = self.dataset
        ep = np.asarray(episode_idx, dtype=np.int64).reshape(-1)
        st = np.asarray(start_idx, dtype=np.int64).reshape(-1)
        if ep.shape != st.shape:
            raise ValueError(f"episode_idx and start_idx must have the same length, got {ep.size} and {st.size}")
        if ep.size and (ep.min() < 0 or ep.max() >= ds.num_episodes):
            raise ValueError(f"episode index out of range [0, {ds.num_episodes})")
        lengths = ds.episode_lengths[ep]
        if ep.size and (st.min() < 0 or (st >= lengths).any()):
            raise ValueError("start index out of range [0, episode length)")
        ends = np.minimum(lengths, st + self.context) if self.segments else np.minimum(lengths, self.context)
        T = int(ends.max()) if ep.size else 0
        steps = np.broadcast_to(np.arange(T), (ep.size, T))
        real = steps < ends[:, None]
        states, actions, rewards, rtg, timesteps, realf = _gather(
            ds, ep, steps, real, self.normalize_states, self.reward_scale
        )
        mask = realf * (steps >= st[:, None])
        return EpisodeBatch(states, actions, rewards, rtg, timesteps, mask.astype(np.float32), st)


class TransitionBatch(NamedTuple):
    """B single transitions (numpy arrays)."""

    states: np.ndarray
    """float32 [B, obs_dim], normalized when the sampler does."""
    actions: np.ndarray
    """float32 [B, act_dim]."""
    rewards: np.ndarray
    """float32 [B]."""
    next_states: np.ndarray | None
    """float32 [B, obs_dim] (normalized like ``states``), or None when the dataset has no final
    observations (then the next state of an episode's last step is unknown)."""
    terminals: np.ndarray
    """float32 [B], 1 where the transition ends in a true terminal state (not a time limit)."""


class TransitionSampler:
    """Uniformly random transitions (with replacement), e.g. for behaviour cloning.

    Args:
        dataset: the trajectories.
        seed: seeds a ``numpy.random.Generator``.
        normalize_states: normalize ``states``/``next_states`` with the dataset's mean/std.
    """

    def __init__(self, dataset: TrajectoryDataset, *, seed: int, normalize_states: bool = True) -> None:
        self.dataset = dataset
        self.normalize_states = normalize_states
        self.rng = np.random.default_rng(seed)
        ends = dataset.episode_starts + dataset.episode_lengths - 1
        self._is_end = np.zeros(dataset.num_transitions, dtype=bool)
        self._is_end[ends] = True

    def sample(self, batch_size: int) -> TransitionBatch:
        """A batch of ``batch_size`` random transitions."""
        return self.transitions(self.rng.integers(0, self.dataset.num_transitions, size=int(batch_size)))

    def transitions(self, rows: np.ndarray) -> TransitionBatch:
        """The transitions at the given rows (int [B] in ``[0, num_transitions)``)."""
        ds = self.dataset
        rows = np.asarray(rows, dtype=np.int64)
        states = ds.observations[rows]
        next_states = None
        if ds.final_observations is not None:
            at_end = self._is_end[rows]
            nxt_rows = np.minimum(rows + 1, ds.num_transitions - 1)
            next_states = ds.observations[nxt_rows]
            if at_end.any():
                ep = np.searchsorted(ds.episode_starts, rows[at_end], side="right") - 1
                next_states[at_end] = ds.final_observations[ep]
        if self.normalize_states:
            states = (states - ds.state_mean) / ds.state_std
            if next_states is not None:
                next_states = (next_states - ds.state_mean) / ds.state_std
        return TransitionBatch(
            states=states,
            actions=ds.actions[rows],
            rewards=ds.rewards[rows],
            next_states=next_states,
            terminals=ds.terminals[rows].astype(np.float32),
        )
