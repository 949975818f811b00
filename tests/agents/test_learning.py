"""Learning, not just running: on a tiny deterministic task the DT must beat random and follow its target."""

from __future__ import annotations

import numpy as np
import pytest
from flowrl.agents import BCConfig, DecisionTransformerConfig, TrainConfig, fit, make_agent
from flowrl.envs import evaluate

from .conftest import TOY_HORIZON, TOY_ID, toy_dataset

TRAIN = TrainConfig(steps=300, eval_episodes=0, log_every=50, checkpoint_every=1000, seed=0)


class _Random:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def reset(self, env_mask, target_return=None):
        pass

    def act(self, observations, last_rewards):
        return self.rng.uniform(-1, 1, size=(len(observations), 1)).astype(np.float32)


def _returns(policy, targets):
    results = evaluate(policy, TOY_ID, episodes=4, num_envs=4, seed=0, target_returns=targets, progress=False)
    return [float(np.mean(r.returns)) for r in results]


@pytest.mark.parametrize("attention", ["flow", pytest.param("softmax", marks=pytest.mark.slow)])
def test_dt_beats_random_and_follows_target_return(attention):
    ds = toy_dataset(episodes=200)
    cfg = DecisionTransformerConfig(
        context=5,
        dim=32,
        depth=1,
        heads=1,
        attention=attention,
        lr=1e-3,
        warmup_steps=20,
        batch_size=32,
        dropout=0.0,
        reward_scale=1.0 / TOY_HORIZON,
    )
    agent = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=0)
    fit(agent, ds, TRAIN, progress=False)
    high, low = 0.75 * TOY_HORIZON, -0.25 * TOY_HORIZON  # achievable: |action| <= 1 over H steps
    r_high, r_low = _returns(agent.make_policy(), [high, low])
    (r_random,) = _returns(_Random(0), [None])
    assert r_high > r_random + 0.5 * TOY_HORIZON, (r_high, r_random)
    assert r_high - r_low > 0.6 * TOY_HORIZON, (r_high, r_low)
    assert abs(r_high - high) < 0.2 * TOY_HORIZON and abs(r_low - low) < 0.2 * TOY_HORIZON, (r_high, r_low)


def _imitation_error(agent, ds) -> float:
    """Mean |action - behaviour action| on the toy states after the first step, where the state names the
    episode's action level (return so far / steps so far)."""
    later = ds.observations[:, 0] > 0
    return float(np.abs(agent.act(ds.observations[later]) - ds.actions[later]).mean())


def test_bc_imitates_the_behaviour():
    # BC cannot be conditioned on a target, but it can copy the behaviour: from the second step on, the toy
    # state reveals the episode's action level, and BC must keep to it, on episodes it has not seen
    ds = toy_dataset(episodes=200)
    held_out = toy_dataset(episodes=50, seed=1)
    cfg = BCConfig(hidden=32, layers=2, dropout=0.0)
    untrained = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=0)
    untrained.fit_normalization(ds)
    agent = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=0)
    fit(agent, ds, TRAIN, progress=False)
    # levels are uniform in [-1, 1]: a constant guess is off by 0.5 on average, a random one by 2/3
    assert _imitation_error(untrained, held_out) > 0.3
    assert _imitation_error(agent, held_out) < 0.1
    # in the environment it keeps the level it starts with (about the data's mean, 0): a return near 0 with
    # every episode alike, where a random policy's returns spread by about sqrt(H/3) = 2.6
    results = evaluate(agent.make_policy(), TOY_ID, episodes=4, num_envs=4, seed=0, progress=False)
    assert abs(float(np.mean(results[0].returns))) < 0.3 * TOY_HORIZON
    assert float(np.std(results[0].returns)) < 1e-3
