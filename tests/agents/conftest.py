"""Tiny datasets and a tiny deterministic environment for agent tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from flowrl.envs import TrajectoryDataset

TOY_ID = "FlowrlToyLine-v0"
TOY_HORIZON = 20


class ToyLine(gym.Env):
    """Deterministic: reward = action[0] at every step, for a fixed horizon; obs = (t/H, return so far / H).

    An episode's return is the sum of its actions, so a return-conditioned policy must choose the action
    level from the target: target R -> action R/H. A uniformly random policy scores 0 on average.
    """

    def __init__(self):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.t, self.ret = 0, 0.0

    def _obs(self):
        return np.array([self.t / TOY_HORIZON, self.ret / TOY_HORIZON], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.ret = 0, 0.0
        return self._obs(), {}

    def step(self, action):
        r = float(np.clip(action[0], -1, 1))
        self.t += 1
        self.ret += r
        return self._obs(), r, False, False, {}


if TOY_ID not in gym.registry:
    gym.register(TOY_ID, entry_point=ToyLine, max_episode_steps=TOY_HORIZON)


def toy_dataset(episodes: int = 200, seed: int = 0) -> TrajectoryDataset:
    """Episodes of the toy env, each with one constant action level drawn uniformly from [-1, 1]."""
    rng = np.random.default_rng(seed)
    H = TOY_HORIZON
    levels = rng.uniform(-1, 1, size=episodes).astype(np.float32)
    acts = np.repeat(levels, H)[:, None]
    t = np.tile(np.arange(H), episodes)
    ret_before = (t * acts[:, 0]).astype(np.float32)
    obs = np.stack([t / H, ret_before / H], axis=1).astype(np.float32)
    timeouts = np.zeros(episodes * H, bool)
    timeouts[H - 1 :: H] = True
    return TrajectoryDataset.from_arrays(
        obs, acts, acts[:, 0].copy(), np.zeros_like(timeouts), timeouts, {"gym_id": TOY_ID, "env_name": TOY_ID}
    )


def random_dataset(
    n: int = 600, obs_dim: int = 5, act_dim: int = 2, episode: int = 50, seed: int = 0, env: str | None = None
):
    """Random transitions; ``env`` names an environment in the metadata (training checks that they fit it)."""
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(n, bool)
    timeouts[episode - 1 :: episode] = True
    return TrajectoryDataset.from_arrays(
        rng.normal(size=(n, obs_dim)).astype(np.float32),
        np.tanh(rng.normal(size=(n, act_dim))).astype(np.float32),
        rng.normal(size=n).astype(np.float32),
        np.zeros(n, bool),
        timeouts,
        {} if env is None else {"gym_id": env},
    )


def roll(policy, obs: np.ndarray, rew: np.ndarray, resets: dict, target_return: float = 30.0) -> np.ndarray:
    """The actions [steps, N, act_dim] ``policy`` takes on observations ``obs`` [steps, N, obs_dim] with the
    rewards ``rew`` [steps, N] following them: all N environments reset first, and at step t those of the
    mask ``resets[t]`` (their last reward then 0)."""
    n = obs.shape[1]
    policy.reset(np.ones(n, bool), target_return=target_return)
    got, last_r = [], np.zeros(n, np.float32)
    for t in range(len(obs)):
        if t in resets:
            policy.reset(resets[t], target_return=target_return)
            last_r = np.where(resets[t], 0.0, last_r).astype(np.float32)
        got.append(policy.act(obs[t], last_r))
        last_r = rew[t]
    return np.stack(got)


@pytest.fixture
def tiny_data():
    return random_dataset()
