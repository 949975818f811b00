"""Recording for ``flowrl collect``: roll a behaviour policy (or uniform random actions) out in a batch of env
copies and return flat D4RL arrays; read a training run's replay buffer the same way (medium-replay)."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import numpy as np

from flowrl.errors import InputError

__all__ = [
    "record",
    "measure_returns",
    "buffer_transitions",
    "concat_levels",
    "summarize",
    "flat_dims",
    "make_env",
    "one_torch_thread",
]


@contextlib.contextmanager
def one_torch_thread():
    """Run the block with one torch thread (small MLPs: more threads only add contention), then restore."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def make_env(gym_id: str, max_episode_steps: int, *, seed: int | None = None):
    import gymnasium as gym

    try:
        env = gym.make(gym_id, max_episode_steps=max_episode_steps)
    except gym.error.Error as e:  # unregistered id, missing dependency, ...
        raise InputError(f"cannot make environment {gym_id!r}: {e}") from None
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def progress_bar(**kwargs):
    """A tqdm bar (imported here so that importing this module stays cheap)."""
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def flat_dims(spec) -> tuple[int, int, np.ndarray, np.ndarray]:
    env = make_env(spec.gym_id, spec.max_episode_steps)
    try:
        from gymnasium.spaces import Box

        if not isinstance(env.observation_space, Box) or not isinstance(env.action_space, Box):
            raise InputError(f"{spec.gym_id}: only continuous (Box) observation and action spaces are supported")
        obs_dim = int(np.prod(env.observation_space.shape))
        act_dim = int(np.prod(env.action_space.shape))
        return obs_dim, act_dim, np.asarray(env.action_space.low), np.asarray(env.action_space.high)
    finally:
        env.close()


def record(
    spec,
    transitions: int,
    policy=None,
    *,
    deterministic: bool = False,
    seed: int = 0,
    num_envs: int = 16,
    progress: bool = True,
    desc: str = "record",
) -> dict[str, Any]:
    """Roll out ``policy`` (None: uniform random actions) for exactly ``transitions`` steps.

    ``num_envs`` copies of the env step in lockstep (a gymnasium vector env; the policy sees one batch per
    step). Each copy contributes ``transitions / num_envs`` steps; its episode in flight when its share is used
    up is cut and flagged as a timeout (D4RL does the same at the end of a file). Copy ``i`` is reset with seed
    ``seed + i``; actions are drawn from generators seeded with ``seed``, so a call is reproducible.

    Returns flat float32 arrays ``observations`` [N, obs], ``next_observations`` [N, obs], ``actions``
    [N, act], ``rewards`` [N] and bool ``terminals``, ``timeouts`` [N] (episodes in env-copy order), plus
    ``episode_returns`` (episodes that ended by termination or time limit) and ``cut_returns`` (cut ones).
    """
    with one_torch_thread():
        return _record(
            spec,
            transitions,
            policy,
            deterministic=deterministic,
            seed=seed,
            num_envs=num_envs,
            progress=progress,
            desc=desc,
        )


def _record(spec, transitions, policy, *, deterministic, seed, num_envs, progress, desc) -> dict[str, Any]:
    import gymnasium as gym
    import torch

    if transitions <= 0:
        raise InputError(f"transitions must be positive, got {transitions}")
    num_envs = max(1, min(num_envs, transitions))
    budget = [transitions // num_envs + (i < transitions % num_envs) for i in range(num_envs)]
    venv = gym.vector.SyncVectorEnv(
        [lambda: make_env(spec.gym_id, spec.max_episode_steps) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    space: Any = venv.single_action_space  # a Box: checked when the policy was matched to the env
    low, high = space.low, space.high
    if policy is None and not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise InputError(f"{spec.gym_id} has an unbounded action space; uniform random actions are undefined")
    keys = ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")
    per_env: list[dict[str, list]] = [{k: [] for k in keys} for _ in range(num_envs)]
    count = [0] * num_envs
    running = np.zeros(num_envs)
    ep_returns: list[float] = []
    cut_returns: list[float] = []
    bar = progress_bar(total=transitions, desc=desc, disable=not progress, unit="step", mininterval=0.5)
    try:
        obs, _ = venv.reset(seed=seed)
        while min(c - b for c, b in zip(count, budget)) < 0:
            if policy is None:
                act = rng.uniform(low, high, size=(num_envs, len(low))).astype(np.float32)
            else:
                act = policy.act(obs, deterministic=deterministic, generator=gen)
            nxt, rew, term, trunc, info = venv.step(act)
            final = nxt.copy()
            if "_final_obs" in info:
                for j in np.flatnonzero(info["_final_obs"]):
                    final[j] = info["final_obs"][j]
            running += rew
            for i in range(num_envs):
                if count[i] >= budget[i]:
                    continue
                count[i] += 1
                d = per_env[i]
                cut = count[i] == budget[i] and not (term[i] or trunc[i])
                d["observations"].append(obs[i])
                d["next_observations"].append(final[i])
                d["actions"].append(act[i])
                d["rewards"].append(rew[i])
                d["terminals"].append(bool(term[i]))
                d["timeouts"].append(bool(trunc[i] and not term[i]) or cut)
                if term[i] or trunc[i]:
                    ep_returns.append(float(running[i]))
                elif cut:
                    cut_returns.append(float(running[i]))
            running[term | trunc] = 0.0
            obs = nxt
            bar.update(int(sum(min(c, b) for c, b in zip(count, budget))) - bar.n)
    finally:
        bar.close()
        venv.close()
    out: dict[str, Any] = {
        "observations": np.asarray([o for d in per_env for o in d["observations"]], dtype=np.float32),
        "next_observations": np.asarray([o for d in per_env for o in d["next_observations"]], dtype=np.float32),
        "actions": np.asarray([a for d in per_env for a in d["actions"]], dtype=np.float32),
        "rewards": np.asarray([r for d in per_env for r in d["rewards"]], dtype=np.float32),
        "terminals": np.asarray([t for d in per_env for t in d["terminals"]], dtype=bool),
        "timeouts": np.asarray([t for d in per_env for t in d["timeouts"]], dtype=bool),
    }
    out["episode_returns"] = np.asarray(ep_returns, dtype=np.float64)
    out["cut_returns"] = np.asarray(cut_returns, dtype=np.float64)
    return out


def measure_returns(
    spec,
    policy=None,
    episodes: int = 100,
    *,
    deterministic: bool = False,
    seed: int = 0,
    num_envs: int = 16,
    progress: bool = True,
    desc: str = "measure",
) -> np.ndarray:
    """Returns of ``episodes`` whole episodes of ``policy`` (None: uniform random), batched over env copies."""
    with one_torch_thread():
        return _measure(
            spec,
            policy,
            episodes,
            deterministic=deterministic,
            seed=seed,
            num_envs=num_envs,
            progress=progress,
            desc=desc,
        )


def _measure(spec, policy, episodes, *, deterministic, seed, num_envs, progress, desc) -> np.ndarray:
    import gymnasium as gym
    import torch

    num_envs = max(1, min(num_envs, episodes))
    venv = gym.vector.SyncVectorEnv(
        [lambda: make_env(spec.gym_id, spec.max_episode_steps) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    space: Any = venv.single_action_space  # a Box: checked when the policy was matched to the env
    low, high = space.low, space.high
    # Copy i plays episodes i, i + num_envs, ...: a fixed assignment, so the result does not depend on timing.
    quota = [len(range(i, episodes, num_envs)) for i in range(num_envs)]
    returns: list[list[float]] = [[] for _ in range(num_envs)]
    running = np.zeros(num_envs)
    bar = progress_bar(total=episodes, desc=desc, disable=not progress, unit="ep")
    try:
        obs, _ = venv.reset(seed=seed)
        while any(len(r) < q for r, q in zip(returns, quota)):
            if policy is None:
                act = rng.uniform(low, high, size=(num_envs, len(low))).astype(np.float32)
            else:
                act = policy.act(obs, deterministic=deterministic, generator=gen)
            obs, rew, term, trunc, _ = venv.step(act)
            running += rew
            for i in np.flatnonzero(term | trunc):
                if len(returns[i]) < quota[i]:
                    returns[i].append(float(running[i]))
                    bar.update(1)
                running[i] = 0.0
    finally:
        bar.close()
        venv.close()
    return np.asarray([r for rs in returns for r in rs], dtype=np.float64)


def buffer_transitions(run_dir: str | os.PathLike, n: int, action_low, action_high) -> dict[str, Any]:
    """The first ``n`` replay-buffer transitions of a run as flat D4RL arrays (actions in env units).

    SB3 stores actions squashed to [-1, 1]; they are mapped back to ``[action_low, action_high]``. The last
    transition is flagged as a timeout when its episode was still running at step ``n``.
    """
    from flowrl.envs.collect.training import load_buffer

    b = load_buffer(run_dir, n)
    low = np.asarray(action_low, dtype=np.float64)
    high = np.asarray(action_high, dtype=np.float64)
    actions = (low + 0.5 * (b["actions"].astype(np.float64) + 1.0) * (high - low)).astype(np.float32)
    dones = b["dones"] > 0.5
    timeouts = (b["timeouts"] > 0.5) & dones
    terminals = dones & ~timeouts
    timeouts[-1] |= not dones[-1]
    ends = np.flatnonzero(terminals | timeouts)
    rew = b["rewards"].astype(np.float64)
    csum = np.concatenate([[0.0], np.cumsum(rew)])
    starts = np.concatenate([[0], ends[:-1] + 1])
    returns = csum[ends + 1] - csum[starts]
    return {
        "observations": b["observations"].astype(np.float32),
        "next_observations": b["next_observations"].astype(np.float32),
        "actions": actions,
        "rewards": b["rewards"].astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "episode_returns": returns,
        "cut_returns": np.zeros(0),
    }


def concat_levels(*parts: dict[str, Any]) -> dict[str, Any]:
    """Concatenate recorded levels (medium-expert = medium + expert); every part ends with a flagged step."""
    keys = (
        "observations",
        "next_observations",
        "actions",
        "rewards",
        "terminals",
        "timeouts",
        "episode_returns",
        "cut_returns",
    )
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def summarize(arrays: dict[str, Any]) -> dict[str, Any]:
    """Counts and return statistics of recorded arrays (complete episodes when there are any)."""
    rets = arrays["episode_returns"]
    use = rets if len(rets) else arrays["cut_returns"]
    return {
        "transitions": int(len(arrays["rewards"])),
        "episodes": int(np.count_nonzero(arrays["terminals"] | arrays["timeouts"])),
        "complete_episodes": int(len(rets)),
        "mean_return": float(np.mean(use)) if len(use) else None,
        "std_return": float(np.std(use)) if len(use) else None,
        "min_return": float(np.min(use)) if len(use) else None,
        "max_return": float(np.max(use)) if len(use) else None,
    }
