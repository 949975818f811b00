"""Success rates: each spec rule aggregated per episode, the same in sync, async and worker rollouts, in
results and in the CLI's table."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from flowrl.envs import EnvSpec, evaluate
from gymnasium import spaces

TOY = "FlowrlTestSuccessToy-v0"
HORIZON = 10


class SuccessToy(gym.Env):
    """Reports ``info["success"]`` at the first ``seed % 5`` steps (so episode i's count is known from its
    seed) and, Kitchen-like, ``seed % 3`` completed tasks in ``episode_task_completions``."""

    def __init__(self, tasks_to_complete=None):
        self.observation_space = spaces.Box(-1, 1, (2,), np.float32)
        self.action_space = spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k, self.t = seed % 5, 0
        self.tasks = ["microwave", "kettle"][: seed % 3]
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        info = {"success": self.t <= self.k, "episode_task_completions": list(self.tasks)}
        return np.zeros(2, np.float32), float(self.t <= self.k), False, False, info


@pytest.fixture(scope="module", autouse=True)
def _registered():
    gym.register(TOY, entry_point=f"{__name__}:SuccessToy", max_episode_steps=HORIZON)
    yield
    gym.registry.pop(TOY)


class Zero:
    def reset(self, env_mask, target_return):
        pass

    def act(self, observations, last_rewards):
        return np.zeros((len(observations), 1), np.float32)


SEED = 100
EPISODES = 12
COUNTS = np.array([(SEED + i) % 5 for i in range(EPISODES)])  # success steps of episode i
TASKS = np.array([(SEED + i) % 3 for i in range(EPISODES)])  # tasks completed in episode i


@pytest.mark.parametrize(
    "rule, steps, kwargs, expected",
    [
        ("reached", 0, {}, COUNTS > 0),
        ("goal_steps", 2, {}, COUNTS > 2),
        ("all_tasks", 0, {"tasks_to_complete": ["microwave", "kettle"]}, TASKS >= 2),
    ],
)
def test_rules_per_episode(rule, steps, kwargs, expected):
    spec = EnvSpec("toy", TOY, HORIZON, success=rule, success_steps=steps, env_kwargs=kwargs)
    (res,) = evaluate(Zero(), spec, episodes=EPISODES, num_envs=5, seed=SEED, progress=False)
    np.testing.assert_array_equal(res.success, expected)
    assert res.success_rate == pytest.approx(expected.mean())
    assert res.to_dict()["success_rate"] == pytest.approx(expected.mean())
    assert res.to_dict()["success"] == expected.tolist()


def test_no_rule_no_success():
    (res,) = evaluate(Zero(), EnvSpec("toy", TOY, HORIZON), episodes=3, num_envs=3, progress=False)
    assert res.success is None and res.success_rate is None and res.to_dict()["success_rate"] is None


@pytest.mark.parametrize("mode", ["async", "workers"])
def test_success_is_the_same_in_every_rollout_mode(mode):
    spec = EnvSpec("toy", TOY, HORIZON, success="goal_steps", success_steps=1)
    kwargs = {"vectorization": "async"} if mode == "async" else {"workers": 2}
    (ref,) = evaluate(Zero(), spec, episodes=EPISODES, num_envs=4, seed=SEED, progress=False)
    (res,) = evaluate(Zero(), spec, episodes=EPISODES, num_envs=4, seed=SEED, progress=False, **kwargs)
    np.testing.assert_array_equal(res.success, COUNTS > 1)
    np.testing.assert_array_equal(res.success, ref.success)
    np.testing.assert_array_equal(res.returns, ref.returns)


def test_eval_table_shows_success_only_when_reported():
    from flowrl.scripts.report import eval_table

    row = {"target_return": 1.0, "episodes": 4, "return_mean": 1.0, "return_std": 0.0, "length_mean": 10.0}
    row.update(normalized_mean=50.0, normalized_std=1.0, seconds=0.1)
    with_rate = eval_table([{**row, "success_rate": 0.75}])
    assert "success" in with_rate.splitlines()[0] and "75%" in with_rate
    assert "success" not in eval_table([{**row, "success_rate": None}])
