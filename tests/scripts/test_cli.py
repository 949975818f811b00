"""The `flowrl` command end to end: subprocess smoke tests with tiny budgets, --help, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from flowrl.envs import write_npz
from flowrl.scripts.cli import main

COMMANDS = ["train", "evaluate", "collect", "datasets", "bench"]
TINY = [
    "--steps",
    "4",
    "--dim",
    "16",
    "--depth",
    "1",
    "--heads",
    "1",
    "--context",
    "4",
    "--batch-size",
    "8",
    "--eval-episodes",
    "2",
    "--num-envs",
    "2",
    "--max-episode-steps",
    "10",
    "--quiet",
]


def flowrl(*args: str, cwd=None, timeout=300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowrl.scripts", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


@pytest.fixture(scope="module")
def hopper_npz(tmp_path_factory) -> Path:
    """300 random Hopper-v5 transitions in D4RL keys."""
    env = gym.make("Hopper-v5", max_episode_steps=40)
    rng = np.random.default_rng(0)
    obs, _ = env.reset(seed=0)
    rows = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    for _ in range(300):
        a = rng.uniform(-1, 1, 3).astype(np.float32)
        nxt, r, term, trunc, _ = env.step(a)
        for k, v in zip(rows, (obs, a, r, term, trunc)):
            rows[k].append(v)
        obs = env.reset()[0] if term or trunc else nxt
    rows["timeouts"][-1] = not rows["terminals"][-1]
    path = tmp_path_factory.mktemp("data") / "hopper-tiny.npz"
    write_npz(path, {k: np.asarray(v) for k, v in rows.items()}, metadata={"env_name": "hopper"})
    return path


@pytest.fixture(scope="module")
def trained_run(hopper_npz, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = flowrl("train", "--dataset", str(hopper_npz), "--out", str(out), *TINY)
    assert res.returncode == 0, res.stderr
    assert "normalized score" in res.stdout and "3600" in res.stdout
    return out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert f"flowrl {command}" in capsys.readouterr().out


def test_train_help_lists_every_config_field_with_its_doc(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, doc in [
        ("--context", "Context length K"),
        ("--clamp", "conserved source flow"),
        ("--hidden", "Width of each hidden layer"),
        ("--eval-every", "Evaluate every"),
        ("--bf16", "bfloat16 autocast"),
    ]:
        assert flag in text and doc in text, flag


def test_train_then_evaluate_and_resume(trained_run, hopper_npz):
    files = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "checkpoints", "results.json", "learning_curve.png"} <= files
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["algo"] == "dt" and cfg["agent"]["attention"] == "flow" and cfg["agent"]["dim"] == 16
    res = flowrl(
        "evaluate",
        str(trained_run),
        "--episodes",
        "2",
        "--num-envs",
        "2",
        "--max-episode-steps",
        "8",
        "--target-return",
        "1000",
        "--quiet",
        "--json",
        str(trained_run / "eval.json"),
    )
    assert res.returncode == 0, res.stderr
    rows = json.loads((trained_run / "eval.json").read_text())
    assert rows[0]["target_return"] == 1000 and rows[0]["episodes"] == 2 and rows[0]["normalized_mean"] is not None
    short = ["--episodes", "2", "--num-envs", "2", "--max-episode-steps", "8", "--quiet"]
    # staggered with a restart every step is the window rollout exactly: the same returns
    stag = trained_run / "eval-staggered.json"
    res = flowrl(
        "evaluate",
        str(trained_run),
        *("--rollout", "staggered", "--restart-every", "1", "--target-return", "1000", "--json", str(stag)),
        *short,
    )
    assert res.returncode == 0, res.stderr
    assert json.loads(stag.read_text())[0]["returns"] == pytest.approx(rows[0]["returns"], rel=1e-5)
    two = trained_run / "eval-workers.json"
    res = flowrl("evaluate", str(trained_run), "--workers", "2", "--target-return", "1000", "--json", str(two), *short)
    assert res.returncode == 0, res.stderr
    assert json.loads(two.read_text())[0]["returns"] == pytest.approx(rows[0]["returns"], rel=1e-5)
    res = flowrl("train", "--out", str(trained_run), "--resume", "--steps", "6", "--quiet", "--eval-episodes", "0")
    assert res.returncode == 0, res.stderr
    assert (trained_run / "checkpoints" / "latest").read_text().strip() == "step_00000006"


def test_train_bc_and_softmax(hopper_npz, tmp_path):
    for extra in (
        [
            "--algo",
            "bc",
            "--steps",
            "3",
            "--hidden",
            "8",
            "--eval-episodes",
            "1",
            "--quiet",
            "--max-episode-steps",
            "5",
        ],
        [*TINY, "--attention", "softmax", "--bf16"],
    ):
        res = flowrl("train", "--dataset", str(hopper_npz), "--out", str(tmp_path / extra[1]), *extra)
        assert res.returncode == 0, res.stderr
    # each run is the agent the flags asked for, trained for its steps and evaluated
    bc, soft = (json.loads((tmp_path / name / "config.json").read_text()) for name in ("bc", "4"))
    assert bc["algo"] == "bc" and bc["agent"]["hidden"] == 8 and bc["train"]["steps"] == 3
    assert soft["algo"] == "dt" and soft["agent"]["attention"] == "softmax" and soft["train"]["bf16"] is True
    for name, steps in (("bc", 3), ("4", 4)):
        assert (tmp_path / name / "checkpoints" / "latest").read_text().strip() == f"step_{steps:08d}"
        assert json.loads((tmp_path / name / "results.json").read_text())["eval"], name


def test_datasets_list_and_info(hopper_npz, tmp_path):
    res = flowrl("datasets", "info", str(hopper_npz))
    assert res.returncode == 0, res.stderr
    info = dict((line.split(None, 1) + [""])[:2] for line in res.stdout.splitlines())
    assert (info["transitions"], info["obs_dim"], info["act_dim"]) == ("300", "11", "3")
    # a D4RL cache holding one file, an empty Minari root: the list shows that file, by its D4RL name
    from flowrl.envs import load_dataset, write_d4rl_hdf5

    (tmp_path / "d4rl").mkdir()
    write_d4rl_hdf5(tmp_path / "d4rl" / "hopper_medium-v2.hdf5", load_dataset(hopper_npz))
    env = {"D4RL_DATASET_DIR": str(tmp_path / "d4rl"), "MINARI_DATASETS_PATH": str(tmp_path / "minari")}
    res = flowrl("datasets", "list", env=env)
    assert res.returncode == 0, res.stderr
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in res.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 2 and rows[1][:3] == ["hopper-medium-v2", "d4rl", "300"], res.stdout
    res = flowrl("datasets", "list", env={**env, "D4RL_DATASET_DIR": str(tmp_path / "none")})
    assert "no local datasets" in res.stdout


def _corrupt_checkpoint(run: Path, tmp_path: Path) -> Path:
    bad = tmp_path / "bad"
    src = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    bad.mkdir()
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    data = (bad / "model.pt").read_bytes()
    (bad / "model.pt").write_bytes(data[: len(data) // 3])
    return bad


def test_bad_input_exit_code_2_one_line_nothing_overwritten(trained_run, hopper_npz, tmp_path):
    blocker = tmp_path / "a-file"  # a folder cannot be made under a file, even by root
    blocker.write_text("")
    before = {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")}
    cases = {
        "unknown dataset": ["train", "--dataset", "nosuch-medium-v2", "--out", str(tmp_path / "a")],
        "bad steps": ["train", "--steps", "many"],
        "bad attention": ["train", "--attention", "linear", "--dataset", str(hopper_npz), "--out", str(tmp_path / "b")],
        "negative lr": ["train", "--lr", "-1", "--dataset", str(hopper_npz), "--out", str(tmp_path / "c")],
        "unwritable out": ["train", "--dataset", str(hopper_npz), "--out", str(blocker / "run"), *TINY],
        "existing run": ["train", "--dataset", str(hopper_npz), "--out", str(trained_run)],
        "corrupt checkpoint": ["evaluate", str(_corrupt_checkpoint(trained_run, tmp_path))],
        "missing checkpoint": ["evaluate", str(tmp_path / "nothing")],
        "restart without staggered": ["evaluate", str(trained_run), "--restart-every", "2"],
        "restart beyond context": ["evaluate", str(trained_run), "--rollout", "staggered", "--restart-every", "999"],
        "video with workers": ["evaluate", str(trained_run), "--workers", "2", "--video", str(tmp_path / "v.gif")],
        "zero workers": ["evaluate", str(trained_run), "--workers", "0"],
        "unknown command": ["fly"],
    }
    for name, args in cases.items():
        res = flowrl(*args)
        lines = [ln for ln in res.stderr.splitlines() if ln.strip() and not ln.startswith("note:")]
        assert res.returncode == 2, (name, res.stderr)
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in res.stderr, (name, res.stderr)
    assert {p: p.stat().st_mtime_ns for p in trained_run.rglob("*")} == before
    assert blocker.read_text() == ""


@pytest.mark.slow
def test_main_job_with_no_arguments(tmp_path):
    """`flowrl train` exactly as the README says, from an empty folder (builds hopper-medium first)."""
    res = flowrl("train", "--quiet", cwd=tmp_path, timeout=1800)
    assert res.returncode == 0, res.stderr
    assert "normalized score" in res.stdout
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "results.json").exists()
