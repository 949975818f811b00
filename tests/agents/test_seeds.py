"""Seed-batched training: seed s of a batched run is seed s trained alone; resume, divergence, files, errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from flowrl.agents import BCConfig, DecisionTransformerConfig, TrainConfig, fit, load_agent, make_agent, seed_training
from flowrl.agents.checkpoints import read_latest
from flowrl.agents.seed_policy import SeedBCPolicy, SeedDTPolicy, SplitPolicy
from flowrl.agents.seed_training import fit_seeds, read_seeds_file, seed_dir
from flowrl.agents.stacking import keep_seeds, load_seed_state_dicts, seed_state_dict, stack_models
from flowrl.envs import ContextSampler, EpisodeSampler, TrajectoryDataset, TransitionSampler, evaluate, evaluate_groups
from torch import nn

from flowrl.layers import dropout as dropout_module

from .conftest import TOY_ID, toy_dataset

DT = DecisionTransformerConfig(context=4, dim=16, depth=2, heads=2, batch_size=8, warmup_steps=5, dropout=0.1)
CONFIGS = {
    "flow": DT,
    "softmax": DecisionTransformerConfig(**{**DT.to_dict(), "attention": "softmax"}),
    "bc": BCConfig(hidden=16, batch_size=8),
    # episode memory on 50-step episodes: every seed's batch is 50 steps long, dropout masks included
    "memory": DecisionTransformerConfig(**{**DT.to_dict(), "memory": True, "context": 50, "max_timestep": 50}),
    # ... and on episodes of 3 to 40 steps, whose batches are as long as their longest episode: the seeds'
    # batches are right-padded to the longest, so dropout masks are laid out differently (checked without)
    "memory-ragged": DecisionTransformerConfig(
        **{**DT.to_dict(), "memory": True, "context": 40, "max_timestep": 40, "dropout": 0.0}
    ),
    "memory-segments-ragged": DecisionTransformerConfig(
        **{**DT.to_dict(), "memory": True, "memory_training": "segments", "context": 6, "max_timestep": 40}
        | {"dropout": 0.0}
    ),
}
QUIET = {"eval_episodes": 0, "log_every": 5, "checkpoint_every": 100}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: on a loaded machine a second torch thread only adds hand-off waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _params(agent) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.model.state_dict().items()}


@pytest.fixture
def recorder(monkeypatch):
    """Records every batch a sampler draws (keyed by the seed it was built with) and every dropout mask."""
    batches: dict[int, list] = {}
    masks: list[torch.Tensor] = []
    for cls in (ContextSampler, EpisodeSampler, TransitionSampler):
        init, sample = cls.__init__, cls.sample

        def recording_init(self, *a, _init=init, **kw):
            _init(self, *a, **kw)
            self.recorded = batches.setdefault(kw["seed"], [])

        def recording_sample(self, n, _sample=sample):
            batch = _sample(self, n)
            self.recorded.append(batch)
            return batch

        monkeypatch.setattr(cls, "__init__", recording_init)
        monkeypatch.setattr(cls, "sample", recording_sample)
    original = dropout_module.dropout

    def recording_dropout(x, p, training=True, **kw):
        y = original(x, p, training, **kw)
        if training and p > 0:
            masks.append((y != 0).detach())
        return y

    monkeypatch.setattr(dropout_module, "dropout", recording_dropout)
    return batches, masks


def _ragged_data() -> TrajectoryDataset:
    """Random transitions in episodes of 3 to 40 steps, so that two seeds' episode batches differ in length."""
    rng = np.random.default_rng(1)
    ends = np.cumsum(rng.integers(3, 41, size=30)) - 1
    n = int(ends[-1]) + 1
    timeouts = np.zeros(n, bool)
    timeouts[ends] = True
    return TrajectoryDataset.from_arrays(
        rng.normal(size=(n, 5)).astype(np.float32),
        np.tanh(rng.normal(size=(n, 2))).astype(np.float32),
        rng.normal(size=n).astype(np.float32),
        np.zeros(n, bool),
        timeouts,
        {},
    )


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_a_batched_run_of_two_seeds_is_the_two_single_runs(kind, tiny_data, recorder, tmp_path):
    batches, masks = recorder
    cfg, seeds = CONFIGS[kind], (3, 7)
    if kind.endswith("ragged"):
        tiny_data = _ragged_data()
    singles, single_masks = [], []
    for seed in seeds:
        agent = make_agent(cfg, tiny_data.obs_dim, tiny_data.act_dim, seed=seed)
        masks.clear()
        fit(agent, tiny_data, TrainConfig(steps=20, seed=seed, **QUIET), progress=False)
        singles.append(_params(agent))
        single_masks.append(list(masks))
    single_batches = {s: list(batches[s * 1000]) for s in seeds}
    batches.clear()
    masks.clear()
    fit_seeds(cfg, tiny_data, TrainConfig(steps=20, **QUIET), seeds=seeds, run_dir=tmp_path, progress=False)

    for k, seed in enumerate(seeds):
        # the same data: every batch equal, element for element
        drawn = batches[seed * 1000]
        assert len(drawn) == len(single_batches[seed]) == 20
        for a, b in zip(drawn, single_batches[seed]):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
        # the same dropout masks: seed k's rows of every batched mask
        assert len(masks) == len(single_masks[k])
        assert len(masks) > 0 or cfg.dropout == 0
        for batched, alone in zip(masks, single_masks[k]):
            rows = batched.shape[0] // len(seeds)
            assert torch.equal(batched[k * rows : (k + 1) * rows], alone)
        # the same model after 20 updates, up to reassociation
        got = _params(load_agent(seed_dir(tmp_path, seed)))
        assert got.keys() == singles[k].keys()
        for name, value in singles[k].items():
            torch.testing.assert_close(got[name], value, rtol=0, atol=1e-5, msg=name)


def test_resuming_a_batched_run_is_bit_identical(tiny_data, tmp_path):
    full, split = tmp_path / "full", tmp_path / "split"
    cfg = TrainConfig(steps=20, eval_episodes=0, log_every=5, checkpoint_every=10)
    fit_seeds(DT, tiny_data, cfg, seeds=[0, 1], run_dir=full, progress=False)
    fit_seeds(DT, tiny_data, TrainConfig(**{**cfg.to_dict(), "steps": 10}), seeds=[0, 1], run_dir=split, progress=False)
    fit_seeds(DT, tiny_data, cfg, seeds=[0, 1], run_dir=split, resume=True, progress=False)
    for seed in (0, 1):
        a, b = _params(load_agent(seed_dir(full, seed))), _params(load_agent(seed_dir(split, seed)))
        assert all(torch.equal(a[k], b[k]) for k in a)
        ha = torch.load(full / f"seed_{seed}/checkpoints/step_00000020/trainer.pt", weights_only=True)["history"]
        hb = torch.load(split / f"seed_{seed}/checkpoints/step_00000020/trainer.pt", weights_only=True)["history"]
        assert ha == hb


def test_a_seed_folder_resumes_alone_as_a_single_run(tiny_data, tmp_path):
    """A seed's checkpoint is a single run's: ``fit(resume=True)`` continues it as if it had run alone."""
    cfg = TrainConfig(steps=10, eval_episodes=0, log_every=5, checkpoint_every=10)
    fit_seeds(DT, tiny_data, cfg, seeds=[4, 5], run_dir=tmp_path / "batched", progress=False)
    agent = make_agent(DT, tiny_data.obs_dim, tiny_data.act_dim, seed=5)
    longer = TrainConfig(**{**cfg.to_dict(), "steps": 20, "seed": 5})
    fit(agent, tiny_data, longer, run_dir=seed_dir(tmp_path / "batched", 5), resume=True, progress=False)
    alone = make_agent(DT, tiny_data.obs_dim, tiny_data.act_dim, seed=5)
    fit(alone, tiny_data, longer, progress=False)
    a, b = _params(agent), _params(alone)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5, msg=k)


def test_one_seeds_nan_stops_that_seed_alone(tiny_data, tmp_path, monkeypatch, capsys):
    """Seed 8's batches turn to NaN from its 13th draw: it stops, keeps its step-10 checkpoint and says why;
    seed 2 trains on to the end and equals its single run."""
    cfg = TrainConfig(steps=20, eval_episodes=0, log_every=5, checkpoint_every=10)
    original = seed_training.SeedTrainer.__init__

    def poisoning_init(self, *a, **kw):
        original(self, *a, **kw)
        sampler = self.views[1].sampler
        clean, count = sampler.sample, [0]

        def sample(n):
            count[0] += 1
            batch = clean(n)
            if count[0] >= 13:
                batch.states[:] = np.nan
            return batch

        sampler.sample = sample

    monkeypatch.setattr(seed_training.SeedTrainer, "__init__", poisoning_init)
    out = fit_seeds(DT, tiny_data, cfg, seeds=[2, 8], run_dir=tmp_path, progress=False)
    err = capsys.readouterr().err
    assert "seed 8: the training loss or gradient norm stopped being finite at update 13" in err
    assert "its last checkpoint is step_00000010" in err and "1 other seed go on" in err
    assert list(out["per_seed"]) == [2] and out["stopped"][8]["step"] == 13
    assert read_seeds_file(tmp_path)["stopped"][8]["checkpoint"] == "step_00000010"
    stopped = json.loads((seed_dir(tmp_path, 8) / "results.json").read_text())
    assert stopped["stopped"]["step"] == 13
    assert all(torch.isfinite(v).all() for v in _params(load_agent(seed_dir(tmp_path, 8))).values())
    assert (seed_dir(tmp_path, 2) / "checkpoints/step_00000020").is_dir()
    alone = make_agent(DT, tiny_data.obs_dim, tiny_data.act_dim, seed=2)
    fit(alone, tiny_data, TrainConfig(**{**cfg.to_dict(), "seed": 2}), progress=False)
    got, want = _params(load_agent(seed_dir(tmp_path, 2))), _params(alone)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-5, msg=k)
    # resuming keeps the stopped seed out
    monkeypatch.setattr(seed_training.SeedTrainer, "__init__", original)
    more = TrainConfig(**{**cfg.to_dict(), "steps": 25})
    out = fit_seeds(DT, tiny_data, more, seeds=[2, 8], run_dir=tmp_path, resume=True, progress=False)
    assert list(out["per_seed"]) == [2] and 8 in out["stopped"]


@pytest.mark.parametrize("attention", ["flow", "softmax"])
def test_the_stacked_model_is_each_model_forward_and_backward(attention):
    cfg = DecisionTransformerConfig(context=5, dim=16, depth=2, heads=2, attention=attention, dropout=0.0)
    agents = [make_agent(cfg, 3, 2, seed=s) for s in range(3)]
    for a in agents:
        a.model.double()
    stacked = stack_models([a.model for a in agents])
    B, K = 4, 5
    inputs = [
        (torch.randn(B, K, 3), torch.randn(B, K, 2), torch.randn(B, K, 1), torch.randint(0, 900, (B, K)))
        for _ in agents
    ]
    inputs = [tuple(t.double() if t.is_floating_point() else t for t in x) for x in inputs]
    y = stacked(*(torch.cat(parts) for parts in zip(*inputs)))
    y.square().sum().backward()
    for k, a in enumerate(agents):
        alone = a.model(*inputs[k])
        alone.square().sum().backward()
        torch.testing.assert_close(y[k * B : (k + 1) * B], alone, rtol=0, atol=1e-12)
        for name, p in stacked.named_parameters():
            torch.testing.assert_close(p.grad[k], a.model.get_parameter(name).grad, rtol=0, atol=1e-12, msg=name)
        assert all(torch.equal(v, a.model.state_dict()[n]) for n, v in seed_state_dict(stacked, k).items())


def test_keep_seeds_and_loading_state_dicts():
    models = [make_agent(CONFIGS["bc"], 3, 2, seed=s).model for s in range(3)]
    stacked = stack_models(models)
    opt = torch.optim.AdamW(stacked.parameters())
    stacked(torch.randn(6, 3)).square().sum().backward()
    opt.step()
    moments = {p: opt.state[p]["exp_avg"].clone() for p in stacked.parameters()}
    before = [seed_state_dict(stacked, k) for k in range(3)]
    keep_seeds(stacked, [2, 0], opt)
    for pos, k in enumerate([2, 0]):
        assert all(torch.equal(v, before[k][n]) for n, v in seed_state_dict(stacked, pos).items())
    for p in stacked.parameters():
        assert torch.equal(opt.state[p]["exp_avg"], moments[p][[2, 0]])
    opt.step()  # the optimizer still steps the shrunk parameters
    load_seed_state_dicts(stacked, [before[1], before[1]])
    assert all(torch.equal(v, before[1][n]) for n, v in seed_state_dict(stacked, 1).items())
    with pytest.raises(ValueError, match="3 state dicts for 2 seeds"):
        load_seed_state_dicts(stacked, before)


def test_what_does_not_stack_is_refused():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(3))

    with pytest.raises(ValueError, match="has parameters of its own"):
        stack_models([Odd(), Odd()])
    with pytest.raises(ValueError, match="cannot stack conv"):
        stack_models([_with_conv(), _with_conv()])
    with pytest.raises(ValueError, match="torch's nn.Dropout"):
        stack_models([nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.1))] * 2)
    a, b = make_agent(CONFIGS["bc"], 3, 2, seed=0), make_agent(CONFIGS["bc"], 3, 2, seed=1)
    b.model.normalizer.set(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="buffer normalizer.state_mean differs"):
        stack_models([a.model, b.model])
    with pytest.raises(ValueError, match="differ in structure"):
        stack_models([a.model, make_agent(BCConfig(hidden=16, layers=3), 3, 2).model])


def _with_conv() -> nn.Module:
    m = nn.Module()
    m.conv = nn.Conv1d(2, 2, 1)
    return m


def test_batched_evaluation_gives_each_seed_its_own_runs_returns():
    """Every group plays the same episodes as its model evaluated alone: returns equal to float rounding."""
    ds = toy_dataset(episodes=20)
    for cfg in (CONFIGS["flow"], CONFIGS["softmax"], CONFIGS["bc"]):
        agents = [make_agent(cfg, ds.obs_dim, ds.act_dim, seed=s) for s in range(2)]
        for a in agents:
            a.fit_normalization(ds)
        stacked = stack_models([a.model for a in agents])
        policy = SeedBCPolicy(agents[0], stacked) if cfg is CONFIGS["bc"] else SeedDTPolicy(agents[0], stacked)
        targets = (None,) if cfg is CONFIGS["bc"] else (10.0, -5.0)
        kw = {"episodes": 3, "num_envs": 2, "seed": 5, "target_returns": targets, "progress": False}
        groups = evaluate_groups(policy, TOY_ID, 2, **kw)
        split = evaluate_groups(SplitPolicy([a.make_policy() for a in agents]), TOY_ID, 2, **kw)
        for a, mine, theirs in zip(agents, groups, split):
            alone = evaluate(a.make_policy(), TOY_ID, **kw)
            for m, t, s in zip(mine, theirs, alone):
                np.testing.assert_allclose(m.returns, s.returns, rtol=0, atol=1e-4)
                np.testing.assert_array_equal(t.returns, s.returns)
                assert m.target_return == s.target_return


def test_run_folder_has_every_seed_as_a_run_and_the_summary(tmp_path):
    ds = toy_dataset(episodes=20)
    cfg = TrainConfig(steps=6, eval_every=3, eval_episodes=2, num_envs=2, log_every=3, target_returns=(10.0,))
    out = fit_seeds(CONFIGS["flow"], ds, cfg, seeds=[0, 1, 2], run_dir=tmp_path, progress=False, env_name=TOY_ID)
    assert {p.name for p in tmp_path.iterdir()} >= {"seeds.json", "results.json", "learning_curve.png"}
    summary = json.loads((tmp_path / "results.json").read_text())["summary"][0]
    per_seed = [float(np.mean(out["per_seed"][s]["eval"][0]["returns"])) for s in (0, 1, 2)]
    assert summary["return_per_seed"] == pytest.approx(per_seed)
    assert summary["return_mean"] == pytest.approx(np.mean(per_seed))
    assert summary["return_se"] == pytest.approx(np.std(per_seed, ddof=1) / np.sqrt(3))
    for seed in (0, 1, 2):
        folder = seed_dir(tmp_path, seed)
        assert (folder / "learning_curve.png").is_file() and list(folder.glob("events.out.tfevents.*"))
        res = json.loads((folder / "results.json").read_text())
        assert res["train"]["steps"] == 6 and res["eval"] == out["per_seed"][seed]["eval"]
        # the toy environment has no EnvSpec: the unset reward_scale resolves to 1e-3
        assert load_agent(folder).config == dataclasses.replace(CONFIGS["flow"], reward_scale=1e-3)
        hist = out["per_seed"][seed]["history"]
        assert hist["eval_step"] == [3, 6] and hist["step"] == [3, 6]
        _, state = read_latest(folder / "checkpoints")  # the final evaluation is in the last checkpoint
        assert state["history"]["eval_step"] == [3, 6]


def test_bad_seed_input_is_refused_before_anything_is_written(tiny_data, tmp_path, monkeypatch):
    cfg = TrainConfig(steps=4, **QUIET)
    with pytest.raises(ValueError, match="seeds is empty"):
        fit_seeds(DT, tiny_data, cfg, seeds=[], run_dir=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="seeds must differ"):
        fit_seeds(DT, tiny_data, cfg, seeds=[1, 1], run_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr("flowrl.agents.seed_memory.available_memory", lambda device: 10 * 2**20)
    with pytest.raises(ValueError, match=r"40 seeds need about .* GiB on cpu \(.* MiB per seed\), but only 0.0 GiB"):
        fit_seeds(DT, tiny_data, cfg, seeds=range(40), run_dir=tmp_path / "c", progress=False)
    assert not any((tmp_path / n).exists() for n in "abc")
    monkeypatch.undo()
    fit_seeds(DT, tiny_data, cfg, seeds=[0, 1], run_dir=tmp_path / "d", progress=False)
    before = sorted(str(p) for p in (tmp_path / "d").rglob("*"))
    with pytest.raises(ValueError, match=r"trains seeds \[0, 1\], not \[0, 1, 2\]"):
        fit_seeds(DT, tiny_data, cfg, seeds=[0, 1, 2], run_dir=tmp_path / "d", resume=True, progress=False)
    assert sorted(str(p) for p in (tmp_path / "d").rglob("*")) == before
