"""``flowrl train --seeds S`` end to end: S seeds as one seed-batched run, its folders, resume, bad seed input."""

from __future__ import annotations

import json

from flowrl.scripts.cli import main

from .test_cli import TINY, flowrl, hopper_npz  # noqa: F401 - hopper_npz is a fixture


def test_seeds_train_as_one_run_with_a_run_folder_per_seed_and_resume(hopper_npz, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    res = flowrl("train", "--dataset", str(hopper_npz), "--out", str(out), "--seeds", "2", "--seed", "3", *TINY)
    assert res.returncode == 0, res.stderr
    assert "2 seeds (3..4) as one seed-batched model" in res.stdout
    assert "mean ± standard error over 2 seeds" in res.stdout
    assert json.loads((out / "seeds.json").read_text())["seeds"] == [3, 4]
    summary = json.loads((out / "results.json").read_text())
    assert sorted(summary["per_seed"]) == ["3", "4"]
    for seed in (3, 4):
        own = json.loads((out / f"seed_{seed}" / "config.json").read_text())
        assert own["train"]["seed"] == seed and own["agent"]["dim"] == 16
        assert json.loads((out / f"seed_{seed}" / "results.json").read_text())["train"]["steps"] == 4

    # the batched run resumes as one; then one seed's folder resumes alone, as a plain run
    res = flowrl("train", "--out", str(out), "--resume", "--steps", "6", "--quiet", "--eval-episodes", "0")
    assert res.returncode == 0, res.stderr
    for seed in (3, 4):
        assert json.loads((out / f"seed_{seed}" / "results.json").read_text())["train"]["steps"] == 6
    res = flowrl("train", "--out", str(out / "seed_4"), "--resume", "--steps", "8", "--quiet", "--eval-episodes", "0")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "seed_4" / "results.json").read_text())["train"]["steps"] == 8


def _in_process(capsys, *args: str) -> str:
    """``flowrl ARGS`` in this process (quicker than a subprocess); its one stderr line, checked to be an error."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as e:  # argparse's errors
        code = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]
    assert code == 2, err
    assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    return lines[0]


def test_bad_seed_input_is_one_line_exit_2_and_writes_nothing(hopper_npz, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    res = flowrl("train", "--dataset", str(hopper_npz), "--out", str(run), "--seeds", "2", *TINY)
    assert res.returncode == 0, res.stderr
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}

    line = _in_process(capsys, "train", "--dataset", str(hopper_npz), "--out", str(tmp_path / "a"), "--seeds", "0")
    assert "--seeds" in line and ">= 1" in line
    # the default model: about 180 MiB per seed, so 100,000 seeds fit on no machine
    line = _in_process(capsys, "train", "--dataset", str(hopper_npz), "--out", str(tmp_path / "b"), "--seeds", "100000")
    assert "100000 seeds need about" in line and "MiB per seed" in line and "use at most" in line
    line = _in_process(capsys, "train", "--out", str(run), "--resume", "--seeds", "3")
    assert "trains 2 seeds (0, 1), not 3" in line
    line = _in_process(capsys, "train", "--out", str(run / "seed_0"), "--resume", "--seeds", "2")
    assert "single run" in line

    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
