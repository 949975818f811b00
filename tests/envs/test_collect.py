"""``flowrl collect``: behaviour-policy training with resume, every level's episode structure and metadata,
reproducibility, the shipped policy and the default dataset, and bad input. Tiny budgets (a few hundred
steps); the full default-dataset generation is marked slow."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import shutil
import time

import numpy as np
import pytest
import torch
from flowrl.envs import collect as C
from flowrl.envs.behavior import BehaviorPolicy, from_sb3, load_behavior, save_behavior, shipped_policy_path
from flowrl.envs.minari_io import read_minari_dir
from flowrl.envs.specs import get_spec
from flowrl.scripts.cli import main

HOPPER = get_spec("hopper")
STEPS, EVERY = 300, 100
TINY = {"hidden": (32, 32), "batch_size": 32, "learning_starts": 50}  # a few seconds of SAC on a shared core


class Interrupted(Exception):
    pass


def _ends_ok(ds) -> None:
    """Every episode ends with exactly one flag, on its last row, and no row inside an episode is flagged."""
    flags = ds.terminals | ds.timeouts
    ends = ds.episode_starts + ds.episode_lengths - 1
    assert flags[ends].all()
    assert flags.sum() == len(ends)
    assert not (ds.terminals & ds.timeouts).any()
    assert (ds.episode_lengths <= HOPPER.max_episode_steps).all()


@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory):
    """One tiny Hopper SAC run, interrupted after its first checkpoint and resumed, writing all five levels."""
    base = tmp_path_factory.mktemp("collect")
    root, run_dir = base / "minari", base / "run"
    seen = []

    def crash_after_first(entry):
        seen.append(entry["step"])
        if entry["step"] == EVERY:
            raise Interrupted

    cfg = C.CollectConfig(
        "hopper",
        steps=STEPS,
        checkpoint_every=EVERY,
        eval_episodes=1,
        transitions=400,
        num_envs=4,
        run_dir=str(run_dir),
        **TINY,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        with pytest.raises(Interrupted):
            C.collect(cfg, progress=False, on_checkpoint=crash_after_first)
        interrupted = C.load_run(run_dir)
        assert not root.exists() or not any(root.rglob("metadata.json"))  # nothing written before training ends
        out = C.collect(cfg, progress=False, on_checkpoint=lambda e: seen.append(e["step"]))
    return {"root": root, "run_dir": run_dir, "out": out, "seen": seen, "interrupted": interrupted, "cfg": cfg}


def test_interrupted_run_resumes_and_finishes(hopper_run):
    assert hopper_run["interrupted"]["buffer_pos"] == EVERY
    assert [c["step"] for c in hopper_run["interrupted"]["checkpoints"]] == [EVERY]
    assert hopper_run["seen"] == [100, 200, 300]  # resumed at 100, not restarted
    state = C.load_run(hopper_run["run_dir"])
    assert state["buffer_pos"] == STEPS
    assert [c["step"] for c in state["checkpoints"]] == [100, 200, 300]
    for c in state["checkpoints"]:
        assert (hopper_run["run_dir"] / c["model"]).is_file() and np.isfinite(c["eval_return_mean"])
    buf = C.load_buffer(hopper_run["run_dir"])
    assert len(buf["rewards"]) == STEPS
    # the episode cut by the interruption ends as a truncation at the last transition before the checkpoint
    assert buf["dones"][EVERY - 1] == 1 and buf["timeouts"][EVERY - 1] == 1
    # a finished run is not retrained
    again = C.train_behavior(
        C.BehaviorTrainingConfig("hopper", steps=STEPS, checkpoint_every=EVERY, eval_episodes=1, **TINY),
        hopper_run["run_dir"],
        progress=False,
        on_checkpoint=lambda e: pytest.fail("retrained"),
    )
    assert again["checkpoints"] == state["checkpoints"]


def test_export_medium_policy_from_run(hopper_run, tmp_path):
    out = tmp_path / "pol.pt"
    cfg = dataclasses.replace(hopper_run["cfg"], levels=())
    assert (
        C.collect(cfg, progress=False, export_behavior=out, export_seeds=(0, 1), export_transitions=300, command="test")
        == {}
    )
    meta = json.loads(out.with_suffix(".json").read_text())
    medium = C.select_medium(C.load_run(hopper_run["run_dir"])["checkpoints"], 1 / 3)
    assert meta["policy_step"] == medium["step"] and meta["eval_return"] == pytest.approx(medium["eval_return_mean"])
    assert meta["training_steps"] == STEPS and meta["hidden"] == [32, 32] and meta["command"] == "test"
    assert meta["default_dataset"]["seeds"] == [0, 1] and len(meta["mean_return_range"]) == 2
    pol = load_behavior(out)
    sb3 = C.load_model("sac", hopper_run["run_dir"] / medium["model"])
    want, _ = sb3.predict(np.ones((2, 11)), deterministic=True)
    np.testing.assert_allclose(pol.act(np.ones((2, 11)), deterministic=True), want, atol=1e-5)
    with pytest.raises(FileExistsError):
        C.collect(cfg, progress=False, export_behavior=out)


def test_run_directory_in_use_is_refused(hopper_run):
    import fcntl

    with open(hopper_run["run_dir"] / "lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="in use by another process"):
            C.train_behavior(
                C.BehaviorTrainingConfig("hopper", steps=STEPS, checkpoint_every=EVERY, eval_episodes=1, **TINY),
                hopper_run["run_dir"],
                progress=False,
            )


def test_resume_refuses_other_settings(hopper_run):
    with pytest.raises(ValueError, match="different settings"):
        C.train_behavior(
            C.BehaviorTrainingConfig(
                "hopper", algo="td3", steps=STEPS, checkpoint_every=EVERY, eval_episodes=1, **TINY
            ),
            hopper_run["run_dir"],
            progress=False,
        )


def test_every_level_structure_and_metadata(hopper_run):
    root, out = hopper_run["root"], hopper_run["out"]
    assert list(out) == list(C.LEVELS)
    state = C.load_run(hopper_run["run_dir"])
    medium = C.select_medium(state["checkpoints"], 1 / 3)
    assert medium["step"] <= C.select_expert(state["checkpoints"])["step"]
    data = {}
    for level in C.LEVELS:
        assert out[level]["dataset_id"] == f"flowrl/hopper/{level}-v0"
        ds = read_minari_dir(root / out[level]["dataset_id"])
        data[level] = ds
        _ends_ok(ds)
        m = ds.metadata
        assert m["ref_min_score"] == pytest.approx(HOPPER.ref_min_score)
        assert m["ref_max_score"] == pytest.approx(HOPPER.ref_max_score)
        assert m["level"] == level and m["seed"] == 0 and m["gym_id"] == "Hopper-v5"
        assert m["training_algorithm"] == "SB3 SAC" and m["training_steps"] == STEPS
        assert m["transitions"] == ds.num_transitions and m["episodes"] == ds.num_episodes
        assert "algorithm_name" in m
        assert ds.final_observations is not None
    for level in ("random", "medium", "expert"):
        assert data[level].num_transitions == 400
    assert data["medium"].metadata["policy_step"] == medium["step"]
    expert = C.select_expert(state["checkpoints"])
    assert data["expert"].metadata["policy_step"] == expert["step"]
    assert data["expert"].metadata["eval_return"] == pytest.approx(expert["eval_return_mean"])
    # medium-replay: the replay buffer up to the medium checkpoint, in time order
    rep = data["medium-replay"]
    buf = C.load_buffer(hopper_run["run_dir"], medium["step"])
    assert rep.num_transitions == medium["step"]
    np.testing.assert_allclose(rep.observations, buf["observations"])
    np.testing.assert_allclose(rep.rewards, buf["rewards"])
    # inside an episode the next observation is the following row (time order)
    inner = ~(rep.terminals | rep.timeouts)
    np.testing.assert_allclose(buf["next_observations"][:-1][inner[:-1]], rep.observations[1:][inner[:-1]])
    # medium-expert: medium then expert
    me = data["medium-expert"]
    assert me.num_transitions == 800 and me.num_episodes == data["medium"].num_episodes + data["expert"].num_episodes
    np.testing.assert_array_equal(me.observations[:400], data["medium"].observations)
    np.testing.assert_array_equal(me.actions[400:], data["expert"].actions)


def test_random_level_is_reproducible(tmp_path, monkeypatch):
    a = C.record(HOPPER, 300, None, seed=3, num_envs=3, progress=False)
    b = C.record(HOPPER, 300, None, seed=3, num_envs=3, progress=False)
    c = C.record(HOPPER, 300, None, seed=4, num_envs=3, progress=False)
    for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts"):
        assert a[k].tobytes() == b[k].tobytes(), k
    assert a["actions"].tobytes() != c["actions"].tobytes()
    assert a["actions"].min() >= -1 and a["actions"].max() <= 1
    # the written files' arrays are byte-identical too
    digests = []
    for sub in ("r1", "r2"):
        monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / sub))
        cfg = C.CollectConfig("hopper", levels="random", transitions=300, num_envs=3, seed=3)
        C.collect(cfg, progress=False)
        ds = read_minari_dir(tmp_path / sub / "flowrl/hopper/random-v0")
        digests.append(
            hashlib.sha256(
                b"".join(
                    getattr(ds, k).tobytes() for k in ("observations", "actions", "rewards", "terminals", "timeouts")
                )
            ).hexdigest()
        )
        assert ds.metadata["policy"] == "uniform random" and "run_dir" not in ds.metadata
    assert digests[0] == digests[1]


def test_record_cuts_exactly_and_splits_episodes():
    arr = C.record(HOPPER, 250, None, seed=0, num_envs=4, progress=False)
    assert len(arr["rewards"]) == 250
    flags = arr["terminals"] | arr["timeouts"]
    # each env copy's share (63, 63, 62, 62) ends with a flag
    assert flags[np.cumsum([63, 63, 62, 62]) - 1].all()
    # inside an episode, next_observations[i] is observations[i + 1]
    inner = ~flags[:-1]
    np.testing.assert_array_equal(arr["next_observations"][:-1][inner], arr["observations"][1:][inner])
    assert len(arr["episode_returns"]) + len(arr["cut_returns"]) == flags.sum()


def test_select_medium_rule():
    ck = [{"step": s, "eval_return_mean": r} for s, r in [(1, 10.0), (2, 900.0), (3, 1200.0), (4, 700.0), (5, 3000.0)]]
    assert C.select_expert(ck)["step"] == 5 == C.select_expert(ck, "final")["step"]
    assert C.select_medium(ck, 1 / 3, rule="first")["step"] == 3  # first >= 1000
    assert C.select_medium(ck, 1 / 3)["step"] == 2  # 900 is closer to 1000 than 1200
    assert C.select_medium(ck, 0.25, rule="first")["step"] == 2
    assert C.select_medium(ck, 1.0, rule="first")["step"] == 5 == C.select_medium(ck, 1.0)["step"]
    # a run whose last checkpoint dips (as SAC's do): "final" would make a near-random policy medium
    dip = [
        {"step": s, "eval_return_mean": r} for s, r in [(1, 300.0), (2, 2500.0), (3, 1100.0), (4, 3300.0), (5, 900.0)]
    ]
    assert C.select_expert(dip)["step"] == 4 and C.select_expert(dip, "final")["step"] == 5
    assert C.select_medium(dip, 1 / 3)["step"] == 3
    assert C.select_medium(dip, 1 / 3, rule="first")["step"] == 2  # a lucky early evaluation
    assert C.select_medium(dip, 1 / 3, expert=dip[-1], rule="first")["step"] == 1
    with pytest.raises(ValueError):
        C.select_medium(ck, 0.0)
    with pytest.raises(ValueError):
        C.select_expert(ck, "last")


def test_measured_reference_scores_for_env_without_d4rl_constants(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "m"))
    cfg = C.CollectConfig(
        "InvertedPendulum-v5",
        levels="random,expert",
        steps=150,
        checkpoint_every=150,
        eval_episodes=1,
        transitions=200,
        ref_episodes=4,
        num_envs=2,
        run_dir=str(tmp_path / "run"),
        **TINY,
    )
    out = C.collect(cfg, progress=False)
    m = read_minari_dir(out["expert"]["path"]).metadata
    assert m["ref_source"] == "measured over 4 episodes"
    assert m["ref_min_score"] > 0 and m["ref_max_score"] > 0  # +1 per step alive
    assert out["expert"]["dataset_id"] == "flowrl/invertedpendulum/expert-v0"


# ---------------------------------------------------------------------------------------------- behaviour policy
@pytest.fixture(scope="module")
def sb3_models():
    import gymnasium as gym
    from stable_baselines3 import SAC, TD3

    env = gym.make("Hopper-v5")
    return SAC("MlpPolicy", env, seed=1, device="cpu"), TD3("MlpPolicy", env, seed=1, device="cpu")


def test_compact_actor_matches_sb3(sb3_models, tmp_path):
    obs = np.random.default_rng(0).normal(size=(9, 11)).astype(np.float32)
    for model in sb3_models:
        pol = from_sb3(model)
        want, _ = model.predict(obs, deterministic=True)
        np.testing.assert_allclose(pol.act(obs, deterministic=True), want, atol=1e-5)
        # export -> weights-only load round trip
        path = save_behavior(pol, tmp_path / f"{pol.kind}.pt", {"env": "hopper"})
        torch.load(path, weights_only=True)
        back = load_behavior(path)
        assert back.info["env"] == "hopper" and back.kind == pol.kind
        np.testing.assert_array_equal(back.act(obs, deterministic=True), pol.act(obs, deterministic=True))
    # SAC stochastic actions: same squashed-Gaussian distribution as SB3's actor
    sac = sb3_models[0]
    pol = from_sb3(sac)
    x = torch.as_tensor(obs[:1]).repeat(20000, 1)
    torch.manual_seed(0)
    with torch.no_grad():
        ref = sac.policy.actor(x, deterministic=False)
    ours = pol(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours.mean(0), ref.mean(0), atol=0.02, rtol=0)
    torch.testing.assert_close(ours.std(0), ref.std(0), atol=0.02, rtol=0)
    assert (ours.abs() <= 1).all()


def test_shipped_policy_files():
    path = shipped_policy_path()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert path.stat().st_size + path.with_suffix(".json").stat().st_size < 1 << 20
    state = torch.load(path, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert (meta["obs_dim"], meta["act_dim"], meta["env"]) == (11, 3, "hopper")
    for key in ("command", "training_steps", "policy_step", "eval_return", "mean_return_range", "episode_return_range"):
        assert key in meta, key
    pol = load_behavior(path)
    assert pol.act(np.zeros(11)).shape == (3,)


def test_default_dataset_from_shipped_policy(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds_id = C.ensure_default_dataset("hopper-medium", progress=False, transitions=3000, num_envs=3)
    assert ds_id == "flowrl/hopper/medium-v0"
    ds = read_minari_dir(tmp_path / ds_id)
    _ends_ok(ds)
    assert ds.num_transitions == 3000
    meta = load_behavior(shipped_policy_path()).info
    lo, hi = meta["episode_return_range"]
    m = ds.metadata
    assert m["ref_max_score"] == pytest.approx(HOPPER.ref_max_score) and m["level"] == "medium"
    assert m["complete_episodes"] >= 1 and lo <= m["mean_return"] <= hi
    # present now: returned at once, not regenerated
    mtime = (tmp_path / ds_id / "data" / "main_data.hdf5").stat().st_mtime_ns
    assert C.ensure_default_dataset("hopper-medium", progress=False) == ds_id
    assert (tmp_path / ds_id / "data" / "main_data.hdf5").stat().st_mtime_ns == mtime
    with pytest.raises(ValueError, match="no built-in default dataset"):
        C.ensure_default_dataset("walker2d-medium")


@pytest.mark.slow
def test_full_default_dataset_generation(monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    t0 = time.time()
    ds_id = C.ensure_default_dataset(progress=False)
    wall = time.time() - t0
    ds = read_minari_dir(tmp_path / ds_id)
    meta = load_behavior(shipped_policy_path()).info
    lo, hi = meta["mean_return_range"]
    assert ds.num_transitions == C.DEFAULT_TRANSITIONS
    assert lo <= ds.metadata["mean_return"] <= hi
    assert wall < 300, wall


# ---------------------------------------------------------------------------------------------- bad input (CLI)
def _cli(capsys, *argv):
    code = main(["collect", *argv, "--no-progress"])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def existing(tmp_path, monkeypatch):
    """A written random level, to check that nothing is clobbered."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "m"))
    C.collect(C.CollectConfig("hopper", levels="random", transitions=50, num_envs=2), progress=False)
    f = tmp_path / "m/flowrl/hopper/random-v0/data/main_data.hdf5"
    return f, hashlib.sha256(f.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["nope"], "unknown environment 'nope'"),
        (["Nope-v1"], "cannot make environment"),
        (["hopper", "--levels", "random,best"], "unknown level 'best'"),
        (["hopper", "--from-policy", "x.zip"], "needs --level"),
        (["hopper", "--from-policy", "missing.pt", "--level", "medium"], "no policy file"),
        (["hopper", "--from-policy", "missing.pt", "--level", "replay"], "unknown level 'replay'"),
        (["hopper", "--level", "medium"], "go with --from-policy"),
    ],
)
def test_bad_input_one_line_exit_2(capsys, argv, match):
    code, err = _cli(capsys, *argv)
    assert code == 2 and "\n" not in err and match in err, err


def test_existing_output_refused_unless_overwrite(capsys, existing):
    f, digest = existing
    code, err = _cli(capsys, "hopper", "--levels", "random", "--transitions", "60")
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert hashlib.sha256(f.read_bytes()).hexdigest() == digest
    code, _ = _cli(capsys, "hopper", "--levels", "random", "--transitions", "60", "--seed", "1", "--overwrite")
    assert code == 0 and hashlib.sha256(f.read_bytes()).hexdigest() != digest
    assert read_minari_dir(f.parent.parent).num_transitions == 60


def test_policy_for_other_sizes_refused(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "m"))
    path = save_behavior(BehaviorPolicy(17, 6, (8,)), tmp_path / "cheetah.pt")
    code, err = _cli(capsys, "hopper", "--from-policy", str(path), "--level", "medium", "--transitions", "50")
    assert code == 2 and "size 17" in err and "11 and 3" in err
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").rglob("metadata.json"))


def test_from_policy_records_a_level(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "m"))
    path = save_behavior(BehaviorPolicy(11, 3, (16,)), tmp_path / "tiny.pt", {"eval_return": 1.0})
    code, _ = _cli(
        capsys, "hopper", "--from-policy", str(path), "--level", "expert", "--transitions", "120", "--num-envs", "2"
    )
    assert code == 0
    ds = read_minari_dir(tmp_path / "m/flowrl/hopper/expert-v0")
    _ends_ok(ds)
    assert ds.num_transitions == 120 and ds.metadata["eval_return"] == 1.0
    assert ds.metadata["ref_max_score"] == pytest.approx(HOPPER.ref_max_score)


def test_no_disk_space(capsys, existing, monkeypatch):
    f, digest = existing
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    code, err = _cli(capsys, "hopper", "--levels", "random", "--overwrite")
    assert code == 2 and "not enough disk space" in err and "\n" not in err
    monkeypatch.setattr(shutil, "disk_usage", real)
    assert hashlib.sha256(f.read_bytes()).hexdigest() == digest

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("flowrl.envs.minari_io.write_minari_dataset", full)
    code, err = _cli(capsys, "hopper", "--levels", "random", "--transitions", "60", "--overwrite")
    assert code == 2 and "no space left" in err and "\n" not in err
    assert hashlib.sha256(f.read_bytes()).hexdigest() == digest


def test_levels_parsing():
    assert C.parse_levels("all") == C.LEVELS
    assert C.parse_levels("expert, random") == ("random", "expert")
    assert C.parse_levels("none") == () == C.parse_levels([])
    with pytest.raises(ValueError, match="unknown level"):
        C.parse_levels("")


def test_cli_module_contract():
    import argparse

    from flowrl.scripts import collect as S

    p = argparse.ArgumentParser()
    sub = p.add_subparsers()
    S.add_parser(sub)
    args = p.parse_args(["collect", "hopper", "--medium-fraction", "1/4"])
    assert args.run is S.run and args.medium_fraction == 0.25 and args.steps == 300_000


def test_load_dataset_builds_the_built_in_dataset_on_first_use(monkeypatch, tmp_path):
    """The README's quickstart on a fresh machine: load_dataset("hopper-medium") with an empty Minari root."""
    from flowrl.envs import load_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    real = C.ensure_default_dataset
    calls = []

    def small(name, **kw):  # the real generation, at 1,000 transitions instead of 100,000
        calls.append(name)
        return real(name, **{**kw, "transitions": 1000, "num_envs": 2, "progress": False})

    monkeypatch.setattr("flowrl.envs.collect.default_dataset.ensure_default_dataset", small)
    monkeypatch.setattr("flowrl.envs.loaders.ensure_default_dataset", small)
    ds = load_dataset("hopper-medium")
    assert calls == ["hopper-medium"] and ds.num_transitions == 1000 and ds.obs_dim == 11
    assert (tmp_path / "flowrl/hopper/medium-v0/data/main_data.hdf5").is_file()
    assert load_dataset("hopper-medium").num_transitions == 1000 and calls == ["hopper-medium"]  # made once
    with pytest.raises(ValueError, match="no local dataset 'hopper-expert'"):
        load_dataset("hopper-expert")  # not built in: made by flowrl collect, never on the fly
