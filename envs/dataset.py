"""The trajectory store: flat D4RL-style arrays plus an episode index.

A :class:`TrajectoryDataset` keeps one row per transition (observations, actions, rewards, flags) and
describes episodes by ``episode_starts``/``episode_lengths`` into those rows, so samplers can gather
windows with array indexing instead of holding a per-episode or per-window copy. Everything derived
(episode returns, returns-to-go, state mean/std) is computed once at construction.

Episode boundaries: an episode ends at every row whose ``terminals`` **or** ``timeouts`` flag is set; rows
after the last flag form a trailing episode (e.g. a collection stopped mid-episode), which is kept.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from flowrl.errors import InputError

__all__ = ["TrajectoryDataset", "REQUIRED_KEYS"]

REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
"""The D4RL keys every on-disk format must provide."""

_STD_FLOOR = 1e-6
# Rows per block when reducing over observations: bounds the float64 temporaries to a few tens of MB even
# for 2M-transition datasets.
_BLOCK_ROWS = 1 << 18


class TrajectoryDataset:
    """Flat transition arrays with an episode index; build it with :meth:`from_arrays`.

    Attributes (N transitions, E episodes):
        observations: float32 [N, obs_dim], raw (unnormalized).
        actions: float32 [N, act_dim].
        rewards: float32 [N].
        terminals: bool [N], the episode ended in a true terminal state at this row.
        timeouts: bool [N], the episode was cut (time limit) at this row.
        episode_starts: int64 [E], first row of each episode.
        episode_lengths: int64 [E], rows per episode (>= 1).
        episode_returns: float64 [E], undiscounted sum of rewards per episode.
        returns_to_go: float32 [N], undiscounted sum of this and later rewards within the episode.
        state_mean, state_std: float32 [obs_dim], over all rows; ``state_std`` is floored (+1e-6).
        final_observations: float32 [E, obs_dim] or None, the observation after each episode's last step
            (from ``next_observations`` or a Minari episode's extra observation), when the source has it.
        metadata: dict with, where known, ``env_name``, ``gym_id``, ``ref_min_score``,
            ``ref_max_score``, ``source`` (path or id), ``format``.
        env_name: a name accepted by :func:`flowrl.envs.get_spec`, or None.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    timeouts: np.ndarray
    episode_starts: np.ndarray
    episode_lengths: np.ndarray
    episode_returns: np.ndarray
    returns_to_go: np.ndarray
    state_mean: np.ndarray
    state_std: np.ndarray
    final_observations: np.ndarray | None
    metadata: dict[str, Any]
    env_name: str | None

    def __init__(self) -> None:
        raise TypeError("build a TrajectoryDataset with TrajectoryDataset.from_arrays(...) or load_dataset(...)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        observations: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminals: np.ndarray,
        timeouts: np.ndarray,
        metadata: Mapping[str, Any] | None = None,
        *,
        next_observations: np.ndarray | None = None,
        final_observations: np.ndarray | None = None,
    ) -> TrajectoryDataset:
        """Validate flat D4RL-style arrays and index their episodes.

        Args:
            observations: [N, obs_dim] (or [N] for scalar observations), finite.
            actions: [N, act_dim] (or [N]), finite.
            rewards: [N] (or [N, 1]), finite.
            terminals, timeouts: [N], bool or 0/1.
            metadata: see the class docstring; copied.
            next_observations: optional [N, obs_dim]; only the rows at episode ends are kept (as
                ``final_observations``): inside an episode the next state is the following row.
            final_observations: optional [E, obs_dim], one per episode (wins over ``next_observations``).

        Arrays already float32 / bool and contiguous are kept without a copy.

        Raises:
            ValueError: empty input, wrong rank, mismatched lengths, NaN/inf values; the message names
                the array (and ``metadata['source']`` when given).
        """
        meta = dict(metadata or {})
        where = f" in {meta['source']}" if meta.get("source") else ""
        obs = _as_2d(observations, "observations", where)
        act = _as_2d(actions, "actions", where)
        rew = _as_1d(rewards, "rewards", where, np.float32)
        term = _as_flags(terminals, "terminals", where)
        tout = _as_flags(timeouts, "timeouts", where)
        n = obs.shape[0]
        lengths = {
            "observations": n,
            "actions": act.shape[0],
            "rewards": rew.shape[0],
            "terminals": term.shape[0],
            "timeouts": tout.shape[0],
        }
        if len(set(lengths.values())) != 1:
            detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
            raise InputError(f"mismatched lengths{where}: {detail} (all must have the same first dimension)")
        if n == 0:
            raise InputError(f"empty dataset{where}: 0 transitions")
        for name, arr in (("observations", obs), ("actions", act), ("rewards", rew)):
            _check_finite(arr, name, where)

        self = object.__new__(cls)
        self.observations, self.actions, self.rewards = obs, act, rew
        self.terminals, self.timeouts = term, tout

        ends = np.flatnonzero(term | tout)
        if ends.size == 0 or ends[-1] != n - 1:
            ends = np.append(ends, n - 1)  # trailing episode with neither flag
        starts = np.concatenate([[0], ends[:-1] + 1])
        self.episode_starts = starts.astype(np.int64)
        self.episode_lengths = (ends - starts + 1).astype(np.int64)

        # Per-episode sums via one float64 cumulative sum over the rows: exact enough (|error| ~ 1e-9 for
        # returns of 1e7) and vectorized, unlike a Python loop over episodes.
        csum = np.cumsum(rew, dtype=np.float64)
        before = np.concatenate([[0.0], csum[:-1]])  # sum of rows strictly before row i
        end_total = csum[ends]
        self.episode_returns = end_total - before[starts]
        episode_of_row = np.repeat(np.arange(starts.size), self.episode_lengths)
        with np.errstate(over="ignore"):  # an overflow is reported below, in one line
            self.returns_to_go = (end_total[episode_of_row] - before).astype(np.float32)
        if not (np.isfinite(self.returns_to_go).all() and np.isfinite(self.episode_returns).all()):
            raise InputError(
                f"returns-to-go overflow{where}: the rewards of an episode sum beyond float32's range "
                f"(largest |reward| {float(np.abs(rew).max()):.3g}); rescale the rewards"
            )

        self.state_mean, self.state_std = _mean_std(obs)

        if final_observations is not None:
            final = _as_2d(final_observations, "final_observations", where)
            if final.shape != (starts.size, obs.shape[1]):
                raise InputError(
                    f"final_observations{where} has shape {final.shape}, expected "
                    f"({starts.size}, {obs.shape[1]}) (one per episode)"
                )
            _check_finite(final, "final_observations", where)
        elif next_observations is not None:
            nxt = _as_2d(next_observations, "next_observations", where)
            if nxt.shape != obs.shape:
                raise InputError(f"next_observations{where} has shape {nxt.shape}, expected {obs.shape}")
            final = np.ascontiguousarray(nxt[ends])
            _check_finite(final, "next_observations", where)
        else:
            final = None
        self.final_observations = final

        self.metadata = _complete_metadata(meta)
        self.env_name = self.metadata.get("env_name")
        _check_observation_map(self.metadata, obs.shape[1], where)
        return self

    # ------------------------------------------------------------------ sizes
    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])

    @property
    def num_transitions(self) -> int:
        return int(self.observations.shape[0])

    @property
    def num_episodes(self) -> int:
        return int(self.episode_starts.shape[0])

    def __len__(self) -> int:
        return self.num_transitions

    def __repr__(self) -> str:
        return (
            f"TrajectoryDataset({self.num_transitions} transitions, {self.num_episodes} episodes, "
            f"obs_dim={self.obs_dim}, act_dim={self.act_dim}, env={self.env_name!r})"
        )

    # ------------------------------------------------------------------ access
    def episode(self, index: int) -> dict[str, np.ndarray]:
        """Views (no copies) of episode ``index``: observations [T, obs_dim], actions, rewards,
        terminals, timeouts, returns_to_go [T]."""
        if not -self.num_episodes <= index < self.num_episodes:
            raise IndexError(f"episode {index} out of range for {self.num_episodes} episodes")
        s = int(self.episode_starts[index])
        e = s + int(self.episode_lengths[index])
        return {
            "observations": self.observations[s:e],
            "actions": self.actions[s:e],
            "rewards": self.rewards[s:e],
            "terminals": self.terminals[s:e],
            "timeouts": self.timeouts[s:e],
            "returns_to_go": self.returns_to_go[s:e],
        }

    def next_observations(self) -> np.ndarray | None:
        """[N, obs_dim] next states (a new array), or None when the source had no final observations.

        Inside an episode the next state is the following row; at an episode's last row it is that
        episode's final observation.
        """
        if self.final_observations is None:
            return None
        nxt = np.empty_like(self.observations)
        nxt[:-1] = self.observations[1:]
        nxt[self.episode_starts + self.episode_lengths - 1] = self.final_observations
        return nxt

    def arrays(self) -> dict[str, np.ndarray]:
        """The D4RL keys as a dict of the stored arrays (plus ``next_observations`` when known), e.g. for
        ``write_minari_dataset(id, **ds.arrays(), env_id=...)``."""
        out = {
            "observations": self.observations,
            "actions": self.actions,
            "rewards": self.rewards,
            "terminals": self.terminals,
            "timeouts": self.timeouts,
        }
        nxt = self.next_observations()
        if nxt is not None:
            out["next_observations"] = nxt
        return out

    @property
    def observation_map(self):
        """The :class:`~flowrl.envs.observations.ObservationMap` recorded in the metadata (how an
        environment observation becomes a row of ``observations``), or None for plain flat data."""
        from .observations import ObservationMap

        return ObservationMap.from_metadata(self.metadata)

    # ------------------------------------------------------------------ reporting
    def normalized_returns(self) -> np.ndarray | None:
        """D4RL-normalized episode returns [E] (float64), or None without reference scores."""
        lo, hi = self.metadata.get("ref_min_score"), self.metadata.get("ref_max_score")
        if lo is None or hi is None or hi == lo:
            return None
        return 100.0 * (self.episode_returns - lo) / (hi - lo)

    def summary(self) -> dict[str, Any]:
        """Plain-Python numbers describing the dataset (for ``flowrl datasets info`` and JSON)."""
        ret, lens = self.episode_returns, self.episode_lengths
        norm = self.normalized_returns()
        obs_map = self.observation_map
        return {
            "source": self.metadata.get("source"),
            "format": self.metadata.get("format"),
            "env": self.env_name,
            "gym_id": self.metadata.get("gym_id"),
            "transitions": self.num_transitions,
            "episodes": self.num_episodes,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "observation_map": None if obs_map is None else obs_map.describe(),
            "terminals": int(self.terminals.sum()),
            "timeouts": int(self.timeouts.sum()),
            "return_mean": float(ret.mean()),
            "return_std": float(ret.std()),
            "return_min": float(ret.min()),
            "return_max": float(ret.max()),
            "length_mean": float(lens.mean()),
            "length_min": int(lens.min()),
            "length_max": int(lens.max()),
            "ref_min_score": self.metadata.get("ref_min_score"),
            "ref_max_score": self.metadata.get("ref_max_score"),
            "normalized_return_mean": None if norm is None else float(norm.mean()),
        }


# ---------------------------------------------------------------------- validation helpers
def _as_2d(x: Any, name: str, where: str) -> np.ndarray:
    arr = _as_array(x, name, where, np.float32)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"{name}{where} must be [N, dim], got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _as_1d(x: Any, name: str, where: str, dtype: type) -> np.ndarray:
    arr = _as_array(x, name, where, dtype)
    if arr.ndim == 2 and arr.shape[1] == 1:  # some D4RL files store rewards as [N, 1]
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise InputError(f"{name}{where} must be [N], got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _as_flags(x: Any, name: str, where: str) -> np.ndarray:
    if x is None:
        raise InputError(f"missing array {name!r}{where}")
    arr = np.asarray(x)
    if arr.ndim == 0:
        raise InputError(f"{name}{where} must be [N], got a scalar")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == object):
            raise InputError(f"{name}{where} must be bool or 0/1, got dtype {arr.dtype}")
        arr = _as_array(arr, name, where, np.float64)
        _check_finite(arr, name, where)
        arr = arr != 0
    return _as_1d(arr, name, where, np.bool_)


def _as_array(x: Any, name: str, where: str, dtype: type) -> np.ndarray:
    if x is None:
        raise InputError(f"missing array {name!r}{where}")
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name}{where} cannot be converted to {np.dtype(dtype).name}: {e}") from None


def _check_finite(arr: np.ndarray, name: str, where: str) -> None:
    if arr.dtype == np.bool_:
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = bad.reshape(bad.shape[0], -1).any(axis=1) if bad.ndim else bad.reshape(1)
        row = int(np.flatnonzero(rows)[0])
        kind = "NaN" if np.isnan(arr.reshape(rows.shape[0], -1)[row]).any() else "inf"
        raise InputError(f"{name}{where} contains {kind} values ({int(bad.sum())} entries; first at row {row})")


def _mean_std(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column mean and floored std of [N, D] float32 rows: sums accumulated in float64, two blocked passes
    (the second on float32 rows centred by the mean, which keeps float32 rounding far below the spread)."""
    n = obs.shape[0]
    total = np.zeros(obs.shape[1], dtype=np.float64)
    for i in range(0, n, _BLOCK_ROWS):
        total += obs[i : i + _BLOCK_ROWS].sum(axis=0, dtype=np.float64)
    mean = total / n
    mean32 = mean.astype(np.float32)
    sq = np.zeros_like(total)
    shift = np.zeros_like(total)
    for i in range(0, n, _BLOCK_ROWS):
        d = obs[i : i + _BLOCK_ROWS] - mean32
        sq += np.einsum("ij,ij->j", d, d, dtype=np.float64)
        shift += d.sum(axis=0, dtype=np.float64)
    # correct for mean32 != mean (exact two-pass identity: var = E[d^2] - E[d]^2 with d = x - mean32)
    var = sq / n - (shift / n) ** 2
    std = np.sqrt(np.maximum(var, 0.0)) + _STD_FLOOR
    return mean.astype(np.float32), std.astype(np.float32)


def _check_observation_map(meta: dict[str, Any], obs_dim: int, where: str) -> None:
    """Validate the recorded observation map against the rows and store it in canonical form."""
    from .observations import METADATA_KEYS, ObservationMap

    try:
        obs_map = ObservationMap.from_metadata(meta)
    except ValueError as e:
        raise InputError(f"{e}{where}") from None
    if obs_map is None:
        return
    if obs_map.out_dim is not None and obs_map.out_dim != obs_dim:
        raise InputError(
            f"observations{where} have {obs_dim} columns but the recorded observation map gives "
            f"{obs_map.out_dim} ({obs_map.describe()})"
        )
    for key in METADATA_KEYS:
        meta.pop(key, None)
    meta.update(obs_map.to_metadata())


def _complete_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """Fill ``env_name`` and, from the env spec, missing reference scores; keep everything given."""
    from .specs import SPECS, get_spec, suite_task

    env_name = meta.get("env_name")
    if env_name is None:
        # D4RL's goal and manipulation suites: the dataset name says the task (which maze, which Kitchen
        # tasks); the gymnasium id only where it names the same task (it may carry another version).
        task = next((suite_task(n) for k in ("dataset_name", "dataset_id") if isinstance(n := meta.get(k), str)), None)
        # (D4RL's AntMaze files stay in D4RL's mirrored frame: they name no gymnasium-robotics task)
        if task is not None and meta.get("maze_frame") != "d4rl":
            gid = meta.get("gym_id")
            same = isinstance(gid, str) and _gym_like(gid) and suite_task(gid) == task
            env_name = gid if same else task
    if env_name is None:
        for key in ("gym_id", "env_id"):
            gid = meta.get(key)
            if isinstance(gid, str) and _gym_like(gid):
                env_name = gid
                break
    if env_name is None:
        for key in ("dataset_name", "dataset_id"):
            name = meta.get(key)
            if isinstance(name, str) and name:
                base = name.split("/")[-2] if "/" in name else name.split("-")[0]
                if base.lower() in SPECS:
                    env_name = base.lower()
                    break
    spec = None
    if env_name is not None:
        try:
            spec = get_spec(env_name)
        except ValueError:
            env_name = None
    meta["env_name"] = env_name
    if spec is not None:
        meta.setdefault("gym_id", spec.gym_id)
        if meta.get("ref_min_score") is None and meta.get("ref_max_score") is None and spec.has_reference:
            meta["ref_min_score"] = spec.ref_min_score
            meta["ref_max_score"] = spec.ref_max_score
    for key in ("ref_min_score", "ref_max_score"):
        if meta.get(key) is not None:
            meta[key] = float(meta[key])
    return meta


def _gym_like(name: str) -> bool:
    import re

    return re.fullmatch(r"[A-Za-z][\w:.]*-v\d+", name) is not None
