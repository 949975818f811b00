"""One harness for every agent: flow-DT, softmax-DT and BC."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from flowrl.agents import (
    BCConfig,
    DecisionTransformerConfig,
    TrainConfig,
    Trainer,
    fit,
    load_agent,
    make_agent,
    preset,
)
from flowrl.agents.agent import WEIGHTS_KEY
from flowrl.agents.checkpoints import read_latest
from flowrl.agents.config import config_from_dict

from flowrl.errors import InputError

from .conftest import TOY_ID, random_dataset, roll, toy_dataset

AGENTS = {
    "flow-dt": lambda: DecisionTransformerConfig(context=6, dim=16, depth=2, heads=2, warmup_steps=5, batch_size=8),
    "softmax-dt": lambda: DecisionTransformerConfig(
        context=6, dim=16, depth=2, heads=2, attention="softmax", warmup_steps=5, batch_size=8
    ),
    "bc": lambda: BCConfig(hidden=16, layers=2, batch_size=16),
}

QUICK = dict(eval_episodes=0, log_every=2, checkpoint_every=3)


@pytest.fixture(params=list(AGENTS), ids=list(AGENTS))
def kind(request):
    return request.param


def _agent(kind, ds, seed=0):
    return make_agent(AGENTS[kind](), ds.obs_dim, ds.act_dim, seed=seed)


def _weights(agent):
    return {k: v.clone() for k, v in agent.model.state_dict().items()}


def _assert_same_weights(got: dict, want: dict) -> None:
    """The same tensor names, and every tensor bit-identical."""
    assert list(got) == list(want)
    for k, v in want.items():
        assert isinstance(got[k], torch.Tensor) and torch.equal(got[k], v), k


def test_fit_calls_update_n_times(kind, tiny_data):
    agent = _agent(kind, tiny_data)
    trainer = Trainer(agent, tiny_data, TrainConfig(steps=7, **QUICK), progress=False)
    before = _weights(agent)
    out = trainer.run()
    assert trainer.update_calls == 7 and out["train"]["steps"] == 7
    assert any(not torch.equal(before[k], v) for k, v in agent.model.state_dict().items())


def test_action_shapes_and_bounds(kind, tiny_data):
    agent = _agent(kind, tiny_data)
    agent.fit_normalization(tiny_data)
    policy = agent.make_policy()
    policy.reset(np.ones(4, bool), target_return=10.0)
    rng = np.random.default_rng(0)
    for _ in range(9):
        a = policy.act(rng.normal(size=(4, 5)).astype(np.float32) * 100, rng.normal(size=4).astype(np.float32))
        assert a.shape == (4, 2) and a.dtype == np.float32
        assert np.all(np.abs(a) <= 1.0) and np.isfinite(a).all()


def test_save_load_identical_actions(kind, tiny_data, tmp_path):
    agent = _agent(kind, tiny_data)
    fit(agent, tiny_data, TrainConfig(steps=3, **QUICK), progress=False)
    agent.save(tmp_path / "agent")
    loaded = load_agent(tmp_path / "agent")
    saved = torch.load(tmp_path / "agent" / "model.pt", weights_only=True)  # plain tensors only
    # besides the weights, the file records what model they are (algo, sizes, settings) as JSON bytes
    record = json.loads(bytes(saved.pop(WEIGHTS_KEY).tolist()))
    assert record == json.loads(json.dumps(agent.architecture()))
    _assert_same_weights(saved, agent.model.state_dict())
    _assert_same_weights(loaded.model.state_dict(), agent.model.state_dict())
    assert loaded.config == agent.config and loaded.algo == agent.algo
    obs = np.random.default_rng(1).normal(size=(6, 5)).astype(np.float32)
    rtg = np.linspace(10, 5, 6)
    np.testing.assert_array_equal(loaded.act(obs, rtg), agent.act(obs, rtg))


def test_config_json_round_trip(kind):
    cfg = AGENTS[kind]()
    assert config_from_dict(type(cfg).algo, json.loads(cfg.to_json())) == cfg


def test_unset_reward_scale_is_the_environments(tmp_path):
    """An unset reward_scale takes the dataset environment's EnvSpec value, in the agent, in the model the
    policy reads, and in what is saved; a given one is kept; environments without a spec get 1e-3."""
    maze = random_dataset(obs_dim=4, act_dim=2, env="PointMaze_UMaze-v3")
    small = DecisionTransformerConfig(context=4, dim=16, depth=1, heads=2, warmup_steps=2, batch_size=4)
    assert small.reward_scale is None
    built = make_agent(small, 4, 2, seed=0, env_name="pointmaze-umaze")  # environment known when built
    assert built.config.reward_scale == built.model.config.reward_scale == 1e-2
    learnt = make_agent(small, 4, 2, seed=0)  # environment learnt from the dataset
    assert learnt.config.reward_scale == 1e-3
    learnt.fit_normalization(maze)  # as training starts
    assert learnt.config.reward_scale == learnt.model.config.reward_scale == 1e-2
    learnt.save(tmp_path / "agent")
    assert load_agent(tmp_path / "agent").config.reward_scale == 1e-2
    given = make_agent(dataclasses.replace(small, reward_scale=0.5), 4, 2, seed=0)
    given.fit_normalization(maze)
    assert given.config.reward_scale == 0.5
    assert make_agent(small, 4, 2, env_name="MyOwnEnv-v0").config.reward_scale == 1e-3


def test_resume_is_bit_identical(kind, tiny_data, tmp_path):
    full = _agent(kind, tiny_data)
    fit(full, tiny_data, TrainConfig(steps=8, **QUICK), tmp_path / "full", progress=False)

    part = _agent(kind, tiny_data)
    fit(part, tiny_data, TrainConfig(steps=5, **QUICK), tmp_path / "split", progress=False)
    resumed = _agent(kind, tiny_data, seed=123)  # different init: everything must come from the checkpoint
    out = fit(resumed, tiny_data, TrainConfig(steps=8, **QUICK), tmp_path / "split", resume=True, progress=False)
    assert out["train"]["steps_this_session"] == 3
    _assert_same_weights(resumed.model.state_dict(), full.model.state_dict())
    # and the checkpoints written at the end of both runs hold the same weights, every tensor of them
    _assert_same_weights(
        load_agent(tmp_path / "split").model.state_dict(), load_agent(tmp_path / "full").model.state_dict()
    )


def test_run_folder_contents(tmp_path):
    data = toy_dataset(episodes=10)
    agent = _agent("flow-dt", data)
    cfg = TrainConfig(steps=4, eval_episodes=2, num_envs=2, max_episode_steps=5, log_every=2, checkpoint_every=2)
    out = fit(agent, data, cfg, tmp_path / "run", progress=False)
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"checkpoints", "results.json", "learning_curve.png"} <= names
    assert any(n.startswith("events.out.tfevents") for n in names)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["target_return"] for r in results["eval"]] == [r["target_return"] for r in out["eval"]]
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*"))
    assert ckpts == ["step_00000002", "step_00000004"]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    # the last checkpoint holds the final evaluation, so a resumed run's history and curve keep it
    _, state = read_latest(tmp_path / "run" / "checkpoints")
    assert state["history"]["eval_step"] == [4]


# ---------------------------------------------------------------------------- the DT model itself
@pytest.mark.parametrize("attention", ["flow", "softmax"])
def test_action_at_t_does_not_depend_on_later_tokens(attention):
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(context=8, dim=16, depth=2, heads=2, attention=attention, dropout=0.0)
    model = make_agent(cfg, 5, 3).model.double().eval()
    B, K = 2, 8
    s, a = torch.randn(B, K, 5, dtype=torch.float64), torch.randn(B, K, 3, dtype=torch.float64)
    r, ts = torch.randn(B, K, 1, dtype=torch.float64), torch.arange(K).repeat(B, 1)
    base = model(s, a, r, ts)
    for t in range(K):
        a2, s2, r2 = a.clone(), s.clone(), r.clone()
        a2[:, t:] += 1.0  # a_t itself is the target at t: it must not leak into its own prediction
        s2[:, t + 1 :] += 1.0
        r2[:, t + 1 :] += 1.0
        out = model(s2, a2, r2, ts)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-12)
        if t + 1 < K:
            assert (out[:, t + 1 :] - base[:, t + 1 :]).abs().max() > 1e-6
    # and a_t does depend on s_t: the prediction index is the state token
    s3 = s.clone()
    s3[:, 3] += 1.0
    assert (model(s3, a, r, ts)[:, 3] - base[:, 3]).abs().max() > 1e-6


def test_embed_step_equals_the_tokens_of_a_full_embedding():
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(context=8, dim=16, depth=1, heads=2, max_timestep=6, dropout=0.0)
    model = make_agent(cfg, 5, 3).model.double().eval()
    B, T = 2, 9  # past max_timestep: both sides clamp the time embedding
    s, a = torch.randn(B, T, 5, dtype=torch.float64), torch.randn(B, T, 3, dtype=torch.float64)
    r, ts = torch.randn(B, T, 1, dtype=torch.float64), torch.arange(T).repeat(B, 1)
    full = model.embed(s, a, r, ts)  # (B, 3T, dim): [R̂_t, s_t, a_t] per step
    for t in range(1, T):
        step = model.embed_step(a[:, t - 1], r[:, t], s[:, t], ts[:, t])
        torch.testing.assert_close(step, full[:, 3 * t - 1 : 3 * t + 2], rtol=1e-12, atol=1e-12)
    first = model.embed_step(torch.zeros(B, 3, dtype=torch.float64), r[:, 0], s[:, 0], ts[:, 0])[:, 1:]
    torch.testing.assert_close(first, full[:, :2], rtol=1e-12, atol=1e-12)


def test_policy_step_embedding_equals_the_model():
    """The rollout policy's fused embedding and action head (raw numpy inputs) against embed_step/predict_action."""
    from flowrl.agents.policy import _StepEmbedding

    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(context=8, dim=16, depth=1, heads=2, max_timestep=6, dropout=0.0)
    model = make_agent(cfg, 5, 3).model.double().eval()
    model.normalizer.set(np.linspace(-1, 1, 5), np.linspace(0.5, 2, 5))
    fused = _StepEmbedding(model, torch.float64)
    rng = np.random.default_rng(0)
    a, s, rtg = rng.normal(size=(4, 3)), rng.normal(size=(4, 5)), rng.normal(size=4) * 1000
    t = np.array([0, 1, 5, 9])  # t = 0 (no a_{-1}: its time clamps to 0) and past max_timestep
    got = fused.tokens(a, rtg, s, t)
    T = lambda x, dtype=torch.float64: torch.as_tensor(x, dtype=dtype)  # noqa: E731
    want = model.embed_step(T(a), T(rtg[:, None] * model.config.reward_scale), model.normalizer(T(s)), T(t, torch.long))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    h = torch.randn(4, 16, dtype=torch.float64)
    np.testing.assert_allclose(fused.actions(h), model.predict_action(h).detach().float().numpy(), rtol=1e-6)


ROLLOUT_CASES = [
    ("softmax", "window", None),
    ("flow", "window", None),
    ("flow", "staggered", 1),  # restart every step: the window, exactly
    ("flow", "staggered", 2),
    ("flow", "staggered", 3),  # does not divide K=5: the acting state is not always the oldest one
    ("flow", "staggered", 5),
    ("flow", "episode", None),
]


def _forward_last(agent, states, actions, rtg, timesteps) -> np.ndarray:
    """One plain forward over a whole history (no K truncation, unlike agent.act): the last action."""
    t = lambda x, dtype=torch.float64: torch.as_tensor(np.asarray(x), dtype=dtype)[None]  # noqa: E731
    acts = np.stack(actions)
    acts[-1] = 0.0
    m = agent.model.eval()
    with torch.no_grad():
        s = m.normalizer(t(np.stack(states)))
        pred = m(s, t(acts), t(np.asarray(rtg)[:, None] * agent.config.reward_scale), t(timesteps, torch.long))
    return pred[0, -1].numpy()


def _acting_start(rollout: str, every: int | None, t: int, K: int) -> int:
    """First step of the history the policy's action at episode step t should be computed from."""
    if rollout == "episode":
        return 0
    every = every or 1
    return every * -(-max(0, t - K + 1) // every)  # the oldest restart at most K steps back


@pytest.mark.parametrize("attention,rollout,every", ROLLOUT_CASES, ids=[f"{a}-{r}-{e}" for a, r, e in ROLLOUT_CASES])
def test_stateful_policy_equals_recomputing_from_scratch(attention, rollout, every, kernel):
    torch.manual_seed(0)
    K = 5
    cfg = DecisionTransformerConfig(context=K, dim=16, depth=2, heads=2, attention=attention, dropout=0.0)
    agent = make_agent(cfg, 4, 2)
    agent.model.double()
    agent.model.normalizer.set(np.full(4, 0.5), np.full(4, 2.0))
    policy = agent.make_policy(rollout=rollout, restart_every=every)
    n, steps = 3, 23
    if attention == "flow":  # the decoders run where asked (window mode: full windows too)
        policy.reset(np.ones(n, bool), target_return=30.0)
        assert policy.decoder.native == (kernel == "native")
        assert (policy.window_decoder is not None) == (kernel == "native" and rollout == "window")
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(steps, n, 4)).astype(np.float32)
    rew = rng.normal(size=(steps, n)).astype(np.float32)
    resets = {6: np.array([False, True, False]), 11: np.array([True, False, False])}
    got = roll(policy, obs, rew, resets)
    # from scratch: rebuild each env's episode history and ask agent.act for the action of its last step,
    # given the part of the history the rollout mode shows the model
    expected = np.zeros_like(got)
    for e in range(n):
        start, hist_s, hist_a, hist_r, ret = 0, [], [], [], 30.0
        for t in range(steps):
            if t in resets and resets[t][e]:
                start, hist_s, hist_a, hist_r, ret = t, [], [], [], 30.0
            elif t > start:
                ret -= rew[t - 1, e]
            hist_s.append(obs[t, e])
            hist_r.append(ret)
            hist_a.append(np.zeros(2, np.float32))
            first = _acting_start(rollout, every, len(hist_s) - 1, K)
            sl = slice(first, None)
            a = _forward_last(agent, hist_s[sl], hist_a[sl], hist_r[sl], np.arange(len(hist_s))[sl])
            hist_a[-1] = a
            expected[t, e] = a
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rollout", ["window", "staggered", "episode"])
def test_bfloat16_model_rolls_out(rollout, kernel):
    """A model cast to bf16 rolls out in every mode (the recurrent path works in float32) close to its fp32 twin."""
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(context=4, dim=16, depth=2, heads=2, dropout=0.0)
    agent = make_agent(cfg, 3, 2)
    twin = make_agent(cfg, 3, 2)
    twin.model.load_state_dict(agent.model.state_dict())
    agent.model.to(torch.bfloat16)
    obs = np.random.default_rng(0).normal(size=(9, 2, 3)).astype(np.float32)
    acts = []
    for a in (agent, twin):
        policy = a.make_policy(rollout=rollout)
        policy.reset(np.ones(2, bool), target_return=5.0)
        acts.append(np.stack([policy.act(o, np.ones(2, np.float32)) for o in obs]))
    assert acts[0].dtype == np.float32 and np.isfinite(acts[0]).all()
    np.testing.assert_allclose(acts[0], acts[1], atol=0.05)


def test_rollout_modes_differ_once_the_window_slides(kernel):
    """Staggered and episode rollouts are real approximations after K steps (and equal before)."""
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(context=4, dim=16, depth=2, heads=2, dropout=0.0)
    agent = make_agent(cfg, 3, 2)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(12, 2, 3)).astype(np.float32)
    runs = {}
    for mode in ("window", "staggered", "episode"):
        policy = agent.make_policy(rollout=mode)
        policy.reset(np.ones(2, bool), target_return=10.0)
        runs[mode] = np.stack([policy.act(o, np.ones(2, np.float32)) for o in obs])
    for mode in ("staggered", "episode"):
        np.testing.assert_allclose(runs[mode][:4], runs["window"][:4], rtol=1e-5, atol=1e-6)
        assert np.abs(runs[mode][4:] - runs["window"][4:]).max() > 1e-4


@pytest.mark.parametrize("rollout", ["window", "staggered"])
def test_evaluation_workers_give_the_same_returns(rollout):
    """Forked workers (one torch thread each) roll out copies of the policy: same episodes, same returns."""
    from flowrl.envs import evaluate

    torch.manual_seed(0)
    agent = make_agent(DecisionTransformerConfig(context=4, dim=16, depth=2, heads=2, dropout=0.0), 11, 3)
    runs = [
        evaluate(
            agent.make_policy(rollout=rollout),
            "hopper",
            episodes=3,
            num_envs=2,
            seed=5,
            target_returns=(100.0,),
            max_episode_steps=12,
            progress=False,
            workers=w,
        )[0]
        for w in (1, 2)
    ]
    np.testing.assert_array_equal(runs[0].lengths, runs[1].lengths)
    np.testing.assert_allclose(runs[0].returns, runs[1].returns, rtol=1e-6)


def test_rollout_mode_errors():
    flow = make_agent(DecisionTransformerConfig(context=6, dim=16, heads=2), 3, 2)
    soft = make_agent(DecisionTransformerConfig(context=6, dim=16, heads=2, attention="softmax"), 3, 2)
    with pytest.raises(ValueError, match="unknown rollout 'fast'"):
        flow.make_policy(rollout="fast")
    with pytest.raises(ValueError, match="needs attention='flow'"):
        soft.make_policy(rollout="staggered")
    with pytest.raises(ValueError, match=r"restart_every must be in \[1, context=6\], got 7"):
        flow.make_policy(rollout="staggered", restart_every=7)
    with pytest.raises(ValueError, match="restart_every is for rollout='staggered'"):
        flow.make_policy(restart_every=2)
    policy = flow.make_policy(rollout="staggered")
    assert (policy.restart_every, policy.slots) == (3, 2)


# ---------------------------------------------------------------------------- bad input
def test_training_evaluates_with_the_configured_rollout(tmp_path):
    ds = toy_dataset(episodes=20)
    cfg = DecisionTransformerConfig(context=4, dim=16, depth=1, heads=2, batch_size=8, warmup_steps=1)
    agent = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=0)
    tcfg = TrainConfig(steps=2, eval_episodes=2, num_envs=2, target_returns=(5.0,), eval_rollout="staggered")
    out = fit(agent, ds, tcfg, tmp_path / "run", progress=False)
    assert len(out["eval"][0]["returns"]) == 2
    tcfg = TrainConfig(
        steps=0, eval_episodes=2, num_envs=2, target_returns=(5.0,), eval_rollout="staggered", eval_workers=2
    )
    forked = fit(agent, ds, tcfg, tmp_path / "run-workers", progress=False)
    assert forked["eval"][0]["returns"] == pytest.approx(out["eval"][0]["returns"], rel=1e-5)
    with pytest.raises(ValueError, match="eval_rollout must be auto, window, staggered or episode"):
        TrainConfig(eval_rollout="fast")
    with pytest.raises(ValueError, match="eval_workers must be >= 1"):
        TrainConfig(eval_workers=0)
    soft = make_agent(DecisionTransformerConfig(context=4, dim=16, heads=2, attention="softmax"), 2, 1)
    with pytest.raises(ValueError, match="needs attention='flow'"):
        fit(soft, ds, TrainConfig(steps=1, eval_rollout="episode"), progress=False)
    bc = make_agent(BCConfig(hidden=8), 2, 1)
    with pytest.raises(ValueError, match="are for Decision Transformers, not BC"):
        fit(bc, ds, TrainConfig(steps=1, eval_rollout="staggered"), progress=False)


def test_bad_configs():
    with pytest.raises(ValueError, match="context K must be >= 1"):
        DecisionTransformerConfig(context=0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        DecisionTransformerConfig(lr=-1e-4)
    with pytest.raises(ValueError, match="unknown attention 'linear'"):
        DecisionTransformerConfig(attention="linear")
    with pytest.raises(ValueError, match="unknown window_sampling 'middle'; use start|end"):
        DecisionTransformerConfig(window_sampling="middle")
    with pytest.raises(ValueError, match="unknown preset 'gpt'"):
        preset("gpt")
    assert preset("flowformer").dim == 256 and preset("flowformer").heads == 4


def test_checkpoint_of_another_size_or_truncated(tiny_data, tmp_path):
    agent = _agent("flow-dt", tiny_data)
    agent.save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "agent.json").read_text())
    meta["config"]["dim"] = 32
    (tmp_path / "a" / "agent.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="another model than agent.json describes: dim is 16 in the weights but 32"):
        load_agent(tmp_path / "a")
    # a plain state dict (no description inside) of another size is refused by its shapes
    state = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    del state["_flowrl.agent"]
    torch.save(state, tmp_path / "a" / "model.pt")
    with pytest.raises(InputError, match="does not match the agent's config.*another model size"):
        load_agent(tmp_path / "a")
    agent.save(tmp_path / "b")
    data = (tmp_path / "b" / "model.pt").read_bytes()
    (tmp_path / "b" / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_agent(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="is not a flowrl checkpoint"):
        load_agent(tmp_path)


@pytest.mark.parametrize("saved, claimed", [("softmax", "flow"), ("flow", "softmax")])
def test_weights_of_another_attention_kind_are_refused(tiny_data, tmp_path, saved, claimed):
    """Flow and softmax weights have the same names and shapes: only the weights' own record tells them apart."""
    agent = make_agent(DecisionTransformerConfig(context=6, dim=16, depth=1, heads=2, attention=saved), 5, 2)
    agent.save(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "agent.json").read_text())
    meta["config"]["attention"] = claimed
    (tmp_path / "a" / "agent.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=f"attention is '{saved}' in the weights but '{claimed}' in agent.json"):
        load_agent(tmp_path / "a")
    meta["config"]["attention"] = saved
    (tmp_path / "a" / "agent.json").write_text(json.dumps(meta))
    assert load_agent(tmp_path / "a").config.attention == saved


def test_nan_weights_are_refused(tiny_data, tmp_path):
    agent = _agent("flow-dt", tiny_data)
    with torch.no_grad():
        next(agent.model.parameters()).fill_(float("nan"))
    agent.save(tmp_path / "a")
    with pytest.raises(InputError, match="NaN or infinite weights"):
        load_agent(tmp_path / "a")


def test_dataset_of_other_sizes_is_refused(tiny_data):
    agent = _agent("flow-dt", tiny_data)
    other = random_dataset(obs_dim=7)
    with pytest.raises(ValueError, match="observation/action sizes 7/2 but the agent was built for 5/2"):
        fit(agent, other, TrainConfig(steps=1, **QUICK), progress=False)


@pytest.mark.parametrize("eval_episodes", [1, 0])
def test_dataset_that_does_not_fit_the_env_fails_before_training(tmp_path, eval_episodes):
    data = random_dataset(env=TOY_ID)  # 5-d observations, 2-d actions, but the metadata names the 2-d/1-d toy env
    agent = _agent("flow-dt", data)
    with pytest.raises(InputError, match="observations have size 5 but .* expects 2; actions have size 2 .* expects 1"):
        fit(agent, data, TrainConfig(steps=2, eval_episodes=eval_episodes), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # nothing written


def test_resume_refuses_another_model_size(tiny_data, tmp_path):
    fit(_agent("flow-dt", tiny_data), tiny_data, TrainConfig(steps=2, **QUICK), tmp_path / "r", progress=False)
    bigger = make_agent(DecisionTransformerConfig(context=6, dim=32, depth=2, heads=2), 5, 2)
    with pytest.raises(InputError, match="dim is 16 in the weights but 32 in the agent being trained"):
        fit(bigger, tiny_data, TrainConfig(steps=4, **QUICK), tmp_path / "r", resume=True, progress=False)
    assert (tmp_path / "r" / "checkpoints" / "latest").read_text().strip() == "step_00000002"


@pytest.mark.parametrize("anchor", ["start", "end"])
def test_window_sampling_reaches_the_sampler(anchor):
    """DecisionTransformerConfig.window_sampling picks which end of a training window is drawn uniformly."""
    ds = toy_dataset(episodes=6)
    agent = make_agent(DecisionTransformerConfig(context=8, dim=16, window_sampling=anchor), ds.obs_dim, ds.act_dim)
    sampler = agent.make_sampler(ds, seed=0)
    assert sampler.anchor == anchor
    batch = sampler.sample(512)
    first, real = batch.timesteps[:, 0], batch.mask.sum(1)
    # "end": a window is cut only by the episode start, so every short window starts at step 0;
    # "start": only by the episode end, so short windows start late in their episode
    short = real < 8
    assert short.any()
    assert np.all(first[short] == 0) == (anchor == "end")
