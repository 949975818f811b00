"""Episode memory: the rollout is exactly the computation memory models train on, in both training designs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flowrl.agents import DecisionTransformerConfig, TrainConfig, fit, make_agent
from flowrl.agents.config import PRESETS, preset
from flowrl.agents.memory import prefix_state, segment_predictions
from flowrl.envs import EpisodeSampler, evaluate

from .conftest import TOY_HORIZON, TOY_ID, random_dataset, roll, toy_dataset


def _memory_agent(obs_dim=4, act_dim=2, **kw):
    torch.manual_seed(0)
    cfg = dict(memory=True, context=64, max_timestep=64, dim=16, depth=2, heads=2, dropout=0.0)
    agent = make_agent(DecisionTransformerConfig(**{**cfg, **kw}), obs_dim, act_dim)
    agent.model.double()
    agent.model.normalizer.set(np.full(obs_dim, 0.5), np.full(obs_dim, 2.0))
    return agent


@pytest.mark.parametrize("time", ["table", "none"])
def test_episode_rollout_equals_a_forward_over_the_whole_episode(time, kernel):
    """Every action of the default (episode) rollout equals one forward over the episode so far, from its
    first step, while the environments reset at different times."""
    agent = _memory_agent(timestep_embedding=time)
    policy = agent.make_policy()
    assert policy.rollout == "episode"
    n, steps = 3, 40
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(steps, n, 4)).astype(np.float32)
    rew = rng.normal(size=(steps, n)).astype(np.float32)
    resets = {7: np.array([False, True, False]), 19: np.array([True, False, True]), 23: np.array([False, True, False])}
    got = roll(policy, obs, rew, resets)
    assert policy.decoder.native == (kernel == "native")
    assert got.dtype == np.float64
    model = agent.model.eval()
    T = lambda x, dtype=torch.float64: torch.as_tensor(np.asarray(x), dtype=dtype)[None]  # noqa: E731
    for e in range(n):
        begin = 0
        for t in range(steps):
            if t in resets and resets[t][e]:
                begin = t
            s = obs[begin : t + 1, e]
            r = 30.0 - np.concatenate([[0.0], np.cumsum(rew[begin:t, e], dtype=np.float64)])
            a = got[begin : t + 1, e].copy()
            a[-1] = 0.0
            with torch.no_grad():
                pred = model(
                    model.normalizer(T(s)),
                    T(a),
                    T(r[:, None] * agent.config.reward_scale),
                    T(np.arange(t + 1 - begin), torch.long),
                )
            np.testing.assert_allclose(got[t, e], pred[0, -1].numpy(), rtol=0, atol=1e-10)


def _full_and_segment(agent, batch, carry_grad):
    """(segment predictions, the same positions of one forward over the whole sequences)."""
    states, actions, rtg, timesteps, _ = (
        x.double() if x.is_floating_point() else x for x in agent.batch_tensors(batch)
    )
    full = agent.model(states, actions, rtg, timesteps)
    seg, steps = segment_predictions(
        agent.model, states, actions, rtg, timesteps, batch.starts, agent.config.context, carry_grad=carry_grad
    )
    return seg, full.gather(1, steps[..., None].expand(-1, -1, full.shape[-1])), full


def test_segments_with_carried_state_equal_one_forward_over_the_whole_sequence():
    data = random_dataset(n=600, obs_dim=4, episode=50)
    agent = _memory_agent(memory_training="segments", context=6)
    sampler = agent.make_sampler(data, seed=0)
    rng = np.random.default_rng(0)
    starts = np.r_[0, 0, 47, 44, 44, rng.integers(0, 50, 11)]  # empty prefixes, equal ones, ends past the episode
    batch = sampler.sequences(rng.integers(0, data.num_episodes, 16), starts)
    with torch.no_grad():
        seg, whole, _ = _full_and_segment(agent, batch, carry_grad=False)
    valid = torch.as_tensor(batch.starts)[:, None] + torch.arange(6) < batch.mask.shape[1]  # not past the end
    assert not valid.all()
    torch.testing.assert_close(seg[valid], whole[valid], rtol=0, atol=1e-10)

    # the loss: the segment loss of agent.loss equals the masked loss of the one forward
    states, actions, rtg, timesteps, mask = agent.batch_tensors(batch)
    full = agent.model(states.double(), actions.double(), rtg.double(), timesteps)
    want = ((full - actions.double()).square().mean(-1) * mask).sum() / mask.sum()
    agent.model.float()
    got = agent.loss(batch)
    agent.model.double()
    assert abs(got.item() - want.item()) < 1e-6 * want.item()  # the agent's loss runs in float32

    # gradients: equal when the carried state keeps its gradient; not when it is computed without
    grads = {}
    for name, carry in (("full", None), ("carry", True), ("detached", False)):
        agent.model.zero_grad()
        seg, whole, full = _full_and_segment(agent, batch, carry_grad=bool(carry))
        pred = full if carry is None else seg
        m = mask.double() if carry is None else None
        if carry is None:
            loss = ((pred - actions.double()).square().mean(-1) * m).sum()
        else:
            steps = torch.as_tensor(batch.starts)[:, None] + torch.arange(6)
            valid = steps < mask.shape[1]
            steps = steps.clamp_max(mask.shape[1] - 1)
            seg_mask = mask.double().gather(1, steps) * valid
            seg_act = actions.double().gather(1, steps[..., None].expand(-1, -1, 2))
            loss = ((pred - seg_act).square().mean(-1) * seg_mask).sum()
        loss.backward()
        grads[name] = torch.cat([p.grad.flatten() for p in agent.model.parameters() if p.grad is not None])
    torch.testing.assert_close(grads["carry"], grads["full"], rtol=1e-9, atol=1e-12)
    assert (grads["detached"] - grads["full"]).abs().max() > 1e-6


def test_prefix_state_rows_equal_their_own_forward():
    agent = _memory_agent()
    trunk = agent.model.trunk
    x = torch.randn(5, 30, 16, dtype=torch.float64)
    lengths = torch.tensor([12, 0, 30, 12, 7])
    with torch.no_grad():
        states = prefix_state(trunk, x, lengths)
    for b, n in enumerate(lengths.tolist()):
        if n == 0:
            assert all(float(s.t[b]) == 0 and float(s.kv[b].abs().sum()) == 0 for s in states)
            continue
        with torch.no_grad():
            _, own = trunk(x[b : b + 1, :n], return_state=True)
        for mine, ref in zip(states, own):
            for f, g in zip(mine, ref):
                torch.testing.assert_close(f[b : b + 1].to(g.dtype), g, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"lengths must be int \[5\] in \[0, 30\]"):
        prefix_state(trunk, x, torch.tensor([1, 2, 3, 4, 31]))


def test_episode_sampler_whole_episodes_and_segments():
    data = random_dataset(n=600, obs_dim=3, episode=50)
    whole = EpisodeSampler(data, 50, segments=False, reward_scale=1.0, seed=0, normalize_states=False)
    b = whole.sample(4)
    assert b.states.shape == (4, 50, 3) and (b.starts == 0).all() and b.mask.all()
    ep = np.searchsorted(data.episode_starts, 0)
    np.testing.assert_array_equal(whole.sequences([ep], [0]).states[0], data.observations[:50])
    seg = EpisodeSampler(data, 8, segments=True, reward_scale=1.0, seed=0, normalize_states=False)
    b = seg.sequences(np.array([1, 2]), np.array([45, 10]))
    assert b.states.shape == (2, 50, 3)  # anchored at step 0, up to the longest segment end (45 + 5 steps)
    np.testing.assert_array_equal(b.mask[0], (np.arange(50) >= 45).astype(np.float32))
    np.testing.assert_array_equal(b.mask[1], ((np.arange(50) >= 10) & (np.arange(50) < 18)).astype(np.float32))
    np.testing.assert_array_equal(b.timesteps[1, :18], np.arange(18))
    np.testing.assert_array_equal(b.states[1, :18], data.observations[100:118])  # episode 2
    assert not b.states[1, 18:].any()
    with pytest.raises(ValueError, match="episodes of up to 50 steps .* context=20; set context >= 50"):
        EpisodeSampler(data, 20, segments=False, reward_scale=1.0, seed=0)


def test_memory_config_preset_and_rollout_defaults():
    cfg = preset("memory")
    assert cfg.memory and cfg.context == 1000 and cfg.max_timestep >= cfg.context and cfg.default_rollout == "episode"
    assert "memory" in PRESETS and DecisionTransformerConfig.from_json(cfg.to_json()) == cfg
    assert DecisionTransformerConfig().default_rollout == "window"
    with pytest.raises(ValueError, match="memory=True needs attention='flow'"):
        DecisionTransformerConfig(memory=True, attention="softmax")
    with pytest.raises(ValueError, match="needs max_timestep >= 1000, got 500"):
        DecisionTransformerConfig(memory=True, context=1000, max_timestep=500)
    with pytest.raises(ValueError, match="unknown memory_training 'chunks'"):
        DecisionTransformerConfig(memory_training="chunks")
    with pytest.raises(ValueError, match="unknown timestep_embedding 'sine'"):
        DecisionTransformerConfig(timestep_embedding="sine")
    assert DecisionTransformerConfig(memory=True, context=1000, max_timestep=10, timestep_embedding="none")
    agent = make_agent(DecisionTransformerConfig(memory=True, context=8, max_timestep=8, dim=16), 2, 1)
    assert agent.make_policy().rollout == "episode" and agent.make_policy(rollout="window").rollout == "window"


def test_episodes_longer_than_the_timestep_table_are_refused(tmp_path):
    ds = toy_dataset(episodes=20)  # 20-step episodes, a 20-step time limit
    small = DecisionTransformerConfig(memory=True, context=12, max_timestep=12, dim=16, depth=1, batch_size=4)
    agent = make_agent(small, ds.obs_dim, ds.act_dim)
    with pytest.raises(ValueError, match="episodes of up to 20 steps .* max_timestep=12; set max_timestep >= 20"):
        agent.make_sampler(ds, seed=0)
    with pytest.raises(ValueError, match=r"episodes of up to 20 steps .* 12 steps .*max_timestep=12"):
        evaluate(agent.make_policy(), ds.metadata["gym_id"], episodes=1, target_returns=(5.0,), progress=False)
    evaluate(agent.make_policy(), ds.metadata["gym_id"], episodes=1, target_returns=(5.0,), max_episode_steps=12)
    # training on 10-step episodes for an environment with a 20-step limit fails before the first update
    short = random_dataset(n=200, obs_dim=2, act_dim=1, episode=10, env=TOY_ID)
    seg = DecisionTransformerConfig(memory=True, memory_training="segments", context=4, max_timestep=12, dim=16)
    with pytest.raises(ValueError, match="episodes of up to 20 steps .* max_timestep=12"):
        fit(make_agent(seg, 2, 1), short, TrainConfig(steps=1, eval_episodes=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


@pytest.mark.parametrize("training", ["episodes", "segments"])
def test_memory_model_learns_the_toy_task(training):
    """Both designs train end to end and act on the target return (toy: action level = target / horizon)."""
    ds = toy_dataset(episodes=200)
    K = TOY_HORIZON if training == "episodes" else 5
    cfg = DecisionTransformerConfig(
        memory=True, memory_training=training, context=K, max_timestep=TOY_HORIZON, dim=32, depth=2, heads=2,
        batch_size=16, lr=1e-3, warmup_steps=10, dropout=0.0,
    )  # fmt: skip
    agent = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=0)
    out = fit(agent, ds, TrainConfig(steps=300, eval_episodes=2, num_envs=2, target_returns=(-10.0, 10.0)))
    low, high = (np.mean(r["returns"]) for r in out["eval"])
    assert low < -5 and high > 5, (low, high)
