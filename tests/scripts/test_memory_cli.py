"""`flowrl collect tmaze`, `flowrl train --preset memory` and the episode limit of a timestep table, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def flowrl(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowrl.scripts", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


def test_collect_train_and_evaluate_a_memory_model(tmp_path):
    minari = {"MINARI_DATASETS_PATH": str(tmp_path / "minari")}
    res = flowrl("collect", "tmaze", "--transitions", "1500", "--no-progress", env=minari)
    assert res.returncode == 0, res.stderr
    assert "flowrl/tmaze/mixed-v0" in res.stdout
    run = tmp_path / "run"
    tiny = ["--dim", "16", "--depth", "1", "--batch-size", "2", "--reward-scale", "1", "--quiet"]
    res = flowrl(
        "train", "--dataset", "tmaze-mixed", "--preset", "memory", "--context", "400", "--max-timestep", "500",
        "--steps", "2", "--eval-episodes", "2", "--num-envs", "2", "--out", str(run), *tiny, env=minari,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["agent"]["memory"] and cfg["agent"]["context"] == 400 and cfg["train"]["eval_rollout"] == "auto"
    assert "flowrl/TMaze-v0" in res.stdout

    # an episode longer than the timestep table: one line, exit 2, before any rollout
    res = flowrl("evaluate", str(run), "--max-episode-steps", "600", "--quiet", env=minari)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "600 steps" in res.stderr and "max_timestep=500" in res.stderr
    # the same data again: refused before recording, the dataset kept
    res = flowrl("collect", "tmaze", "--transitions", "1500", "--no-progress", env=minari)
    assert res.returncode == 2 and "exists; pass --overwrite" in res.stderr
    res = flowrl("datasets", "info", "tmaze-mixed", env=minari)
    info = dict(line.split(maxsplit=1) for line in res.stdout.splitlines())
    assert res.returncode == 0 and info["env"] == "tmaze" and 1500 <= int(info["transitions"]) < 1500 + 500


def test_datasets_derive_cli(tmp_path, capsys):
    import numpy as np
    from flowrl.envs import load_dataset, write_d4rl_hdf5
    from flowrl.scripts.cli import main

    rng = np.random.default_rng(0)
    n = 40
    timeouts = np.zeros(n, bool)
    timeouts[19::20] = True
    arrays = {
        "observations": rng.normal(size=(n, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (n, 3)).astype(np.float32),
        "rewards": np.ones(n, np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": timeouts,
    }
    src = write_d4rl_hdf5(tmp_path / "hopper.hdf5", arrays, metadata={"env_name": "hopper"})
    out = tmp_path / "hopper-v.hdf5"
    assert main(["datasets", "derive", str(src), str(out), "--keep", "velocities"]) == 0
    assert "6 dimension(s) of 11 kept" in capsys.readouterr().out
    np.testing.assert_array_equal(load_dataset(str(out)).observations, arrays["observations"][:, 5:])
    # bad input: one line, exit 2, the existing output untouched
    before = out.read_bytes()
    assert main(["datasets", "derive", str(src), str(out), "--keep", "positions"]) == 2
    assert main(["datasets", "derive", str(src), str(tmp_path / "p.hdf5"), "--keep", "0,11"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 2 and "already exists" in err[0] and "dimension 11 is out of range" in err[1]
    assert out.read_bytes() == before and not (tmp_path / "p.hdf5").exists()
