"""Stepping N environments for :func:`flowrl.envs.evaluate` (one process): per-episode seeds, returns,
lengths and success, and the frames of a recorded episode (see :mod:`flowrl.envs.evaluation` for why
the environments are stepped one by one in "sync" mode)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from flowrl.errors import RunError

from .environment import make_rollout_env
from .observations import ObservationMap
from .robotics import ensure_registered, needs_robotics
from .specs import EnvSpec
from .success import SuccessTracker

if TYPE_CHECKING:
    from gymnasium.spaces import Space

    from .evaluation import Policy

__all__ = ["Runner"]


class Runner:
    """N environments with per-episode seeds; steps only the active ones in "sync" mode."""

    def __init__(
        self,
        spec: EnvSpec,
        n: int,
        limit: int,
        mode: str,
        video_size: tuple[int, int] | None,
        env_kwargs: Mapping[str, Any] | None = None,
        obs_map: ObservationMap | None = None,
    ):
        import gymnasium
        from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

        gym_id = spec.gym_id
        kwargs: dict[str, Any] = {**dict(env_kwargs or {}), "max_episode_steps": limit}
        if video_size is not None:
            kwargs["render_mode"] = "rgb_array"
            ensure_registered(gym_id)
            if "mujoco" in str(gymnasium.spec(gym_id).entry_point) or needs_robotics(gym_id):
                kwargs.update(width=video_size[0], height=video_size[1])
        make = functools.partial(make_rollout_env, gym_id, obs_map, **kwargs)
        cls = SyncVectorEnv if mode == "sync" else AsyncVectorEnv
        # Autoreset off: we reset finished environments ourselves, each with its episode's seed.
        self.vec = cls([make] * n, autoreset_mode=AutoresetMode.DISABLED)
        # "sync": the environments themselves, stepped one by one (only the active ones)
        self.envs = self.vec.envs if isinstance(self.vec, SyncVectorEnv) else []
        self.mode = mode
        self.n = n
        self.act_shape = (n, *_shape(self.vec.single_action_space))
        self.success = SuccessTracker(spec, n, env_kwargs)

    def close(self) -> None:
        self.vec.close()

    def _reset(self, mask: np.ndarray, seeds: list[int | None], obs: np.ndarray) -> None:
        if self.mode == "sync":
            for j in np.flatnonzero(mask):
                o, _ = self.envs[j].reset(seed=seeds[j])
                obs[j] = o
        else:
            o, _ = self.vec.reset(seed=seeds, options={"reset_mask": mask})
            obs[mask] = o[mask]

    def _step(self, actions: np.ndarray, active: np.ndarray, obs: np.ndarray):
        """Step; returns rewards [n] and done [n] (0/False for inactive envs), updates ``obs`` in place."""
        rewards = np.zeros(self.n, dtype=np.float64)
        done = np.zeros(self.n, dtype=bool)
        if self.mode == "sync":
            for j in np.flatnonzero(active):
                o, r, term, trunc, info = self.envs[j].step(actions[j])
                obs[j] = o
                rewards[j] = r
                done[j] = term or trunc
                self.success.update(int(j), info)
        else:
            o, r, terms, truncs, infos = self.vec.step(actions)
            self.success.update_vector(infos, active)
            obs[active] = o[active]
            rewards[active] = r[active]
            done[active] = (terms | truncs)[active]
            # Idle environments are stepped too (AsyncVectorEnv steps all); ones that end must be reset
            # before the next step, with any seed since their episodes are not recorded.
            idle_done = ~active & (terms | truncs)
            if idle_done.any():
                self.vec.reset(options={"reset_mask": idle_done})
        return rewards, done

    def run(self, policy: Policy, episodes: int, seed: int, target: float | None, record: bool, bar):
        """Returns per-episode returns float64 [episodes], lengths int64 [episodes], success bool
        [episodes] (None without a success rule) and the recorded frames."""
        returns, lengths, success, frames = self.run_groups(policy, episodes, seed, target, record, bar, 1)
        return returns[0], lengths[0], None if success is None else success[0], frames

    def run_groups(
        self, policy: Policy, episodes: int, seed: int, target: float | None, record: bool, bar, groups: int
    ):
        """:meth:`run` for a policy acting for ``groups`` agents: environment j belongs to group
        ``j // (n / groups)``, and every group plays all ``episodes`` (episode i from ``reset(seed=seed + i)``),
        dealt out to its own environments as they finish. Returns, lengths and success are ``[groups, episodes]``."""
        n = self.n
        per = n // groups
        group_of_env = np.arange(n) // per
        returns = np.zeros((groups, episodes), dtype=np.float64)
        lengths = np.zeros((groups, episodes), dtype=np.int64)
        success = np.zeros((groups, episodes), dtype=bool)
        episode_of_env = np.arange(n) % per
        next_episode = np.full(groups, per)
        obs = np.zeros((n, *_shape(self.vec.single_observation_space)), dtype=np.float64)
        all_envs = np.ones(n, dtype=bool)
        self._reset(all_envs, [seed + int(j) for j in episode_of_env], obs)
        self.success.reset(all_envs)
        policy.reset(all_envs.copy(), target)
        active = all_envs.copy()
        ep_return = np.zeros(n, dtype=np.float64)
        ep_length = np.zeros(n, dtype=np.int64)
        last_rewards = np.zeros(n, dtype=np.float32)
        frames = [self.envs[0].render()] if record else []
        recording = record

        while active.any():
            actions = np.asarray(policy.act(obs.astype(np.float32), last_rewards))
            if actions.shape != self.act_shape:
                raise ValueError(f"policy.act returned shape {actions.shape}, expected {self.act_shape}")
            if not np.isfinite(actions[active]).all():  # the simulator would turn it into NaN returns
                raise RunError(
                    f"the policy produced NaN or infinite actions at step {int(ep_length[active].max())} of an "
                    f"episode (target return {target}); its weights or inputs overflow, so it cannot be evaluated"
                )
            rewards, done = self._step(actions, active, obs)
            ep_return[active] += rewards[active]
            ep_length[active] += 1
            last_rewards = rewards.astype(np.float32)
            if recording:
                frames.append(self.envs[0].render())
                recording = not done[0]
            if not done.any():
                continue
            restart = np.zeros(n, dtype=bool)
            seeds: list[int | None] = [None] * n
            for j in np.flatnonzero(done):
                g = group_of_env[j]
                returns[g, episode_of_env[j]] = ep_return[j]
                lengths[g, episode_of_env[j]] = ep_length[j]
                success[g, episode_of_env[j]] = self.success.succeeded(int(j))
                bar.update(1)
                if next_episode[g] < episodes:
                    episode_of_env[j] = next_episode[g]
                    seeds[j] = seed + int(next_episode[g])
                    restart[j] = True
                    next_episode[g] += 1
                else:
                    active[j] = False
            if restart.any():
                self._reset(restart, seeds, obs)
                self.success.reset(restart)
                ep_return[restart] = 0.0
                ep_length[restart] = 0
                last_rewards[restart] = 0.0
                policy.reset(restart, target)
        return returns, lengths, success if self.success.enabled else None, frames


def _shape(space: Space) -> tuple[int, ...]:
    """The array shape of a (Box) space; the rollout environments' observations are flattened to one."""
    if space.shape is None:
        raise TypeError(f"{space} has no array shape")
    return space.shape
