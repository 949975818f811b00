"""`flowrl train` and `evaluate` under bad input, concurrent use, failures and kills: nothing lost, one line.

Each test is a regression test for an item of issue 15 (the item number is in the test's docstring).
Training runs in this process (``main([...])``) with tiny models unless a kill needs a child process.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from flowrl.scripts.cli import main

TINY = ["--dim", "8", "--depth", "1", "--heads", "1", "--context", "3", "--batch-size", "4", "--warmup-steps", "0"]
QUICK = [*TINY, "--steps", "4", "--eval-episodes", "0", "--checkpoint-every", "2", "--log-every", "1", "--quiet"]


def _hopper_arrays(n: int = 120, seed: int = 0, reward_scale: float = 1.0) -> dict[str, np.ndarray]:
    """Hopper-sized (11-d observations, 3-d actions) random transitions in episodes of 30 steps."""
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(n, bool)
    timeouts[29::30] = True
    return {
        "observations": rng.normal(size=(n, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 3)).astype(np.float32),
        "rewards": (rng.uniform(0, 1, size=n) * reward_scale).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": timeouts,
    }


def _npz(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """An npz file as a user might hand one over (written without flowrl's validation)."""
    np.savez(path, **arrays, metadata_json=json.dumps({"env_name": "hopper"}))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return _npz(tmp_path_factory.mktemp("data") / "hopper-tiny.npz", _hopper_arrays())


def _train(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["train", *args])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    return code, err


def _tree(path: Path) -> dict[str, bytes | None]:
    """Every file under ``path`` with its bytes (folders as None): what must stay untouched."""
    return {str(p.relative_to(path)): (None if p.is_dir() else p.read_bytes()) for p in sorted(path.rglob("*"))}


@pytest.fixture
def finished_run(data, tmp_path, capsys) -> Path:
    out = tmp_path / "run"
    code, err = _train(capsys, "--dataset", str(data), "--out", str(out), *QUICK)
    assert code == 0, err
    return out


# ------------------------------------------------------------------------------------------------ 1. --overwrite
def test_overwrite_validates_everything_before_touching_the_folder(data, finished_run, tmp_path, capsys):
    """Item 1: a bad dataset (missing, truncated) with --overwrite exits 2 and leaves the old run as it was;
    so does --overwrite of a folder that is not a flowrl run, even with good data."""
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data.read_bytes()[:3000])
    before = _tree(finished_run)
    for dataset in (tmp_path / "does-not-exist.hdf5", truncated):
        code, err = _train(capsys, "--dataset", str(dataset), "--out", str(finished_run), "--overwrite", *QUICK)
        assert code == 2 and len(err) == 1 and str(dataset) in err[0], err
        assert _tree(finished_run) == before
    mine = tmp_path / "my-notes"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    code, err = _train(capsys, "--dataset", str(data), "--out", str(mine), "--overwrite", *QUICK)
    assert code == 2 and len(err) == 1 and "not a flowrl run folder" in err[0], err
    assert _tree(mine) == {"thesis.tex": b"precious"}


def test_overwrite_replaces_a_run_once_the_new_one_starts(data, finished_run, tmp_path, capsys):
    """Item 1: the old run's files are gone (its checkpoints too), the new run is whole; through a symlink
    the folder it points at is replaced and the link stays."""
    (finished_run / "checkpoints" / "step_00000099").mkdir()
    (finished_run / "old-notes.txt").write_text("from the old run")
    link = tmp_path / "link"
    link.symlink_to(finished_run)
    code, err = _train(capsys, "--dataset", str(data), "--out", str(link), "--overwrite", *QUICK, "--steps", "2")
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == finished_run.resolve()
    names = sorted(p.name for p in finished_run.iterdir())
    assert "old-notes.txt" not in names and {"config.json", "checkpoints", "results.json"} <= set(names)
    assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == ["latest", "step_00000002"]
    assert json.loads((finished_run / "results.json").read_text())["train"]["steps"] == 2
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    code, err = _train(capsys, "--dataset", str(data), "--out", str(dangling), "--overwrite", *QUICK)
    assert code == 2 and len(err) == 1 and "symlink" in err[0], err


# ------------------------------------------------------------------------------------------------ 2. the run lock
def test_a_second_process_on_the_same_run_folder_is_refused(data, finished_run, capsys):
    """Item 2: while another process holds the run folder, train --resume / --overwrite exit 2 naming it."""
    from flowrl.lock import folder_lock

    before = _tree(finished_run)
    script = f"from flowrl.lock import folder_lock\nimport time\nwith folder_lock({str(finished_run)!r}):\n"
    script += "    print('held', flush=True)\n    time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for extra in (["--resume", "--steps", "6"], ["--overwrite", "--dataset", str(data)]):
            code, err = _train(capsys, "--out", str(finished_run), *QUICK, *extra)
            assert code == 2 and len(err) == 1, err
            assert f"in use by another process (pid {holder.pid})" in err[0]
        assert _tree(finished_run) == {**before, ".lock": f"{holder.pid}\n".encode()}
    finally:
        holder.kill()  # SIGKILL: the kernel drops its lock; the lock file stays behind, stale
        holder.wait()
    code, err = _train(capsys, "--out", str(finished_run), "--resume", "--steps", "6", "--quiet")
    assert code == 0, err
    assert (finished_run / "checkpoints" / "latest").read_text().strip() == "step_00000006"
    assert not (finished_run / ".lock").exists()
    with folder_lock(finished_run):  # released: anyone may take it now
        pass


# ------------------------------------------------------------------------------------------------ 3. leftovers
def test_a_failed_run_leaves_no_folder(data, tmp_path, capsys, monkeypatch):
    """Item 3: a run that fails before its first checkpoint removes the folder it made (and its parents)."""
    from flowrl.agents import trainer

    def broken_update(self, batch):
        raise RuntimeError("a bug in the update")

    monkeypatch.setattr(trainer.Trainer, "update", broken_update)
    out = tmp_path / "new" / "run"
    code, err = _train(capsys, "--dataset", str(data), "--out", str(out), *QUICK)
    assert code == 1 and len(err) == 1 and "internal error: RuntimeError: a bug in the update" in err[0], err
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("seeds", [None, 2])
def test_a_run_that_fails_after_a_checkpoint_keeps_its_folder(data, tmp_path, capsys, monkeypatch, seeds):
    """Item 3: once a checkpoint exists (a seed-batched run's are in seed_<k>/), a failure removes nothing."""
    from flowrl.agents import learning_curve

    def broken_plot(*args, **kwargs):
        raise RuntimeError("a bug in the plot")

    monkeypatch.setattr(learning_curve, "save_figure", broken_plot)
    out = tmp_path / "run"
    seed_args = ["--seeds", str(seeds)] if seeds else []
    code, err = _train(capsys, "--dataset", str(data), "--out", str(out), *seed_args, *QUICK)
    assert code == 1 and "internal error: RuntimeError: a bug in the plot" in err[-1], err
    runs = [out / f"seed_{k}" for k in range(seeds)] if seeds else [out]
    for run in runs:
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000002", "step_00000004"]


def test_temporaries_of_a_killed_checkpoint_write_are_removed(finished_run, capsys):
    """Item 3: hidden checkpoint temporaries of dead writers (this version's and older versions' names)."""
    ckpt = finished_run / "checkpoints"
    for name in (
        ".step_00000006.tmp-999999999-0123abcd",
        ".step_00000006.k3j4l5m6",
        ".step_00000004.old-999999999-0a0b0c0d",
    ):
        (ckpt / name).mkdir()
        (ckpt / name / "model.pt").write_bytes(b"half")
    (finished_run / ".results.json.tmp-999999999-00000000").write_text("{")
    code, err = _train(capsys, "--out", str(finished_run), "--resume", "--steps", "6", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in ckpt.iterdir()) == ["latest", "step_00000004", "step_00000006"]
    assert not [p for p in finished_run.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------------------------ 8. non-finite
def test_non_finite_hyperparameters_and_returns_are_refused(data, tmp_path, capsys):
    """Item 8: --lr inf / nan and a dataset whose returns-to-go overflow float32 exit 2 before anything."""
    for lr in ("inf", "nan"):
        code, err = _train(capsys, "--dataset", str(data), "--out", str(tmp_path / "r"), *QUICK, "--lr", lr)
        assert code == 2 and len(err) == 1 and "lr must be" in err[0], err
    huge = _npz(tmp_path / "huge.npz", _hopper_arrays(reward_scale=1e38))
    code, err = _train(capsys, "--dataset", str(huge), "--out", str(tmp_path / "r"), *QUICK)
    assert code == 2 and len(err) == 1 and "returns-to-go overflow" in err[0] and str(huge) in err[0], err
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_keeping_its_last_good_checkpoint(data, tmp_path, capsys):
    """Item 8: --lr 1e6 drives the weights to NaN: exit 1, one line naming the last good checkpoint, no
    checkpoint after it, no results.json with NaN."""
    out = tmp_path / "run"
    args = ["--dataset", str(data), "--out", str(out), *QUICK, "--steps", "60", "--checkpoint-every", "1"]
    code, err = _train(capsys, *args, "--lr", "1e6", "--grad-clip", "0")
    assert code == 1 and len(err) == 1 and "training diverged" in err[0], err
    assert not (out / "results.json").exists()
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert f"the last good checkpoint is {latest}" in err[0]
    for ckpt in (out / "checkpoints").glob("step_*"):
        weights = torch.load(ckpt / "model.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), ckpt


def test_results_json_is_valid_json_when_a_number_is_not_finite(tmp_path):
    """Item 8: results.json never holds a bare NaN (JSON has none): non-finite numbers become null."""
    from flowrl.agents.trainer import json_safe

    from flowrl import atomic

    payload = {"train": {"final_loss": float("nan"), "steps_per_s": np.float32("inf")}, "eval": [np.array([1.0])]}
    atomic.write_json(tmp_path / "results.json", json_safe(payload))
    assert json.loads((tmp_path / "results.json").read_text(), parse_constant=pytest.fail) == {
        "train": {"final_loss": None, "steps_per_s": None},
        "eval": [[1.0]],
    }


# ------------------------------------------------------------------------------------------------ 9. --resume
def test_resume_refuses_flags_that_contradict_the_run(finished_run, capsys):
    """Item 9: changed model or algorithm flags are named, not silently ignored; a larger budget is fine."""
    before = _tree(finished_run)
    cases = {
        ("--dim", "64", "--attention", "softmax"): [
            "--dim 64 (the run has 8)",
            "--attention softmax (the run has flow)",
        ],
        ("--algo", "bc"): ["--algo bc (the run is dt)"],
        ("--preset", "flowformer"): ["--dim 256 (the run has 8)", "--heads 4 (the run has 1)"],
        ("--hidden", "32"): ["--hidden (not a setting of dt)"],
        ("--seed", "3"): ["--seed 3 (the run has 0)"],
    }
    for flags, expected in cases.items():
        code, err = _train(capsys, "--out", str(finished_run), "--resume", "--steps", "6", "--quiet", *flags)
        assert code == 2 and len(err) == 1, err
        for text in expected:
            assert text in err[0], (flags, err[0])
    assert _tree(finished_run) == before
    # the same values as the run's are no contradiction
    code, err = _train(capsys, "--out", str(finished_run), "--resume", "--steps", "6", "--quiet", "--dim", "8")
    assert code == 0, err


# ------------------------------------------------------------------------------------------------ 11. sizes
def test_dataset_sizes_are_checked_against_the_env_before_training(tmp_path, capsys):
    """Item 11: 4-d actions for Hopper (3-d) are refused before training, even without evaluation."""
    arrays = _hopper_arrays()
    arrays["actions"] = np.zeros((arrays["actions"].shape[0], 4), np.float32)
    bad = _npz(tmp_path / "bad.npz", arrays)
    code, err = _train(capsys, "--dataset", str(bad), "--out", str(tmp_path / "r"), *QUICK)
    assert code == 2 and len(err) == 1 and "actions have size 4 but Hopper-v5 expects 3" in err[0], err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------ 13. messages
def test_errors_are_one_line_without_the_warmup_note(data, tmp_path, capsys):
    """Item 13: the warmup note is printed once training starts, so an error is the only line."""
    code, err = _train(capsys, "--dataset", str(tmp_path / "none.npz"), "--out", str(tmp_path / "r"), "--steps", "10")
    assert code == 2 and err == [f"flowrl train: error: dataset file {tmp_path / 'none.npz'} does not exist"]
    code, err = _train(capsys, "--dataset", str(data), "--out", str(tmp_path / "r"), *TINY[:-2], *QUICK[len(TINY) :])
    assert code == 0 and err[0].startswith("note: warmup_steps 10000 > steps/5"), err


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(data, tmp_path, capsys, monkeypatch):
    """Item 13: "No space left on device" in one line (exit 1); the previous checkpoint stays the latest."""
    import errno

    from flowrl.agents import checkpoints

    real, calls = checkpoints.torch_save, []

    def full_disk(obj, path):
        calls.append(path)
        if len(calls) > 1:  # the first checkpoint fits
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(obj, path)

    monkeypatch.setattr(checkpoints, "torch_save", full_disk)
    out = tmp_path / "run"
    code, err = _train(capsys, "--dataset", str(data), "--out", str(out), *QUICK)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("flowrl train: error: No space left on device: ") and "trainer.pt" in err[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["latest", "step_00000002"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000002"


# ------------------------------------------------------------------------------------------------ 15. modes
def test_run_folder_files_follow_the_umask(data, tmp_path, capsys):
    """Item 15: config.json, results.json, model.pt, step folders: one rule, the user's umask."""
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        code, err = _train(capsys, "--dataset", str(data), "--out", str(out), *QUICK)
    finally:
        os.umask(old)
    assert code == 0, err
    modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
    for name, mode in modes.items():
        want = 0o755 if (out / name).is_dir() else 0o644
        assert mode == want, (name, oct(mode))
    assert {"config.json", "results.json", "checkpoints/step_00000004/model.pt", "checkpoints/step_00000004"} <= set(
        modes
    )


# ------------------------------------------------------------------------------------------------ kill -9
def _killed_at(out: Path, args: list[str], when: str) -> int:
    """Run `flowrl train` in a child that SIGKILLs itself at ``when``; returns its exit status."""
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        from flowrl.agents import checkpoints, trainer
        from flowrl.scripts.cli import main
        when = {when!r}
        if when == "results":  # the final checkpoint is written; results.json is next
            trainer.Trainer._write_results = lambda self, results: os.kill(os.getpid(), signal.SIGKILL)
        else:  # inside the second checkpoint write, its folder half full
            real, n = checkpoints.torch_save, []
            def save(obj, path):
                n.append(path)
                if len(n) == 2:  # trainer.pt of step 4; its model.pt and agent.json are written
                    os.kill(os.getpid(), signal.SIGKILL)
                real(obj, path)
            checkpoints.torch_save = save
        sys.exit(main({["train", *args]!r}))
        """
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300).returncode


@pytest.mark.parametrize("when", ["checkpoint", "results"])
def test_kill_9_then_resume_equals_an_uninterrupted_run(data, tmp_path, capsys, when):
    """A kill in the middle of a checkpoint write, or between the last checkpoint and results.json: the
    run resumes from the last whole checkpoint (hidden leftovers removed) and ends with the weights of an
    uninterrupted run, bit for bit, and a results.json."""
    # one torch thread in both processes: bit-identity needs the same reduction order, and the killed run
    # starts in a fresh process while this one may have had its thread count changed by earlier tests
    args = ["--dataset", str(data), *QUICK, "--dropout", "0.1", "--threads", "1"]
    full = tmp_path / "full"
    code, err = _train(capsys, *args, "--out", str(full))
    assert code == 0, err
    killed = tmp_path / "killed"
    assert _killed_at(killed, [*args, "--out", str(killed)], when) == -signal.SIGKILL
    assert not (killed / "results.json").exists()
    latest = (killed / "checkpoints" / "latest").read_text().strip()
    assert latest == ("step_00000002" if when == "checkpoint" else "step_00000004")
    code, err = _train(capsys, "--out", str(killed), "--resume", "--quiet")
    assert code == 0, err
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["latest", "step_00000002", "step_00000004"]
    a = torch.load(full / "checkpoints" / "step_00000004" / "model.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "step_00000004" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    results = json.loads((killed / "results.json").read_text())
    assert results["train"]["steps"] == 4
    assert results["train"]["steps_this_session"] == (2 if when == "checkpoint" else 0)


# ------------------------------------------------------------------------------------------------ evaluate
def _evaluate(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["evaluate", *args, "--episodes", "1", "--num-envs", "1", "--max-episode-steps", "3", "--quiet"])
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_evaluate_refuses_bad_targets_and_environments_in_one_line(finished_run, tmp_path, capsys):
    """Items 11 and 13: a NaN target return, an unknown --env, an agent.json naming an unknown env: exit 2."""
    for args, message in [
        (["--target-return", "nan"], "target returns must be finite numbers, got [nan]"),
        (["--target-return", "100", "inf"], "target returns must be finite numbers, got [inf]"),
        (["--env", "Nope-v9"], "cannot make environment 'Nope-v9'"),
        (["--env", "nope"], "unknown environment 'nope'"),
    ]:
        code, err = _evaluate(capsys, str(finished_run), *args)
        assert code == 2 and len(err) == 1 and message in err[0], (args, err)
    ckpt = finished_run / "checkpoints" / "step_00000004"
    meta = json.loads((ckpt / "agent.json").read_text())
    meta["env_name"] = "Nope-v9"
    (ckpt / "agent.json").write_text(json.dumps(meta))
    code, err = _evaluate(capsys, str(finished_run), "--target-return", "10")
    assert code == 2 and len(err) == 1 and "cannot make environment 'Nope-v9'" in err[0], err


def test_a_policy_that_produces_nan_is_reported_not_scored():
    """Item 11: NaN actions stop the evaluation with a RunError (exit 1), instead of a table of nan."""
    from flowrl.envs import evaluate

    from flowrl.errors import RunError

    class NaNAfterTwoSteps:
        def reset(self, env_mask, target_return):
            self.t = 0

        def act(self, observations, last_rewards):
            self.t += 1
            return np.full((len(observations), 3), np.nan if self.t > 2 else 0.0, np.float32)

    with pytest.raises(RunError, match="NaN or infinite actions at step 2"):
        evaluate(NaNAfterTwoSteps(), "Hopper-v5", episodes=2, num_envs=2, progress=False)


# ------------------------------------------------------------------------------------------------ no code runs
class _Touch:
    """Unpickling this creates ``path``: what a crafted file would do instead (run any code)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def test_no_file_handed_to_flowrl_runs_code(finished_run, tmp_path, capsys):
    """A checkpoint (model.pt, trainer.pt) or a dataset (npz object array) carrying a code-running pickle is
    refused in one line (exit 2) and its code never runs. (SB3 zips: tests/envs/test_behavior.py.)"""
    marker = tmp_path / "pwned"
    ckpt = finished_run / "checkpoints" / "step_00000004"
    for name in ("model.pt", "trainer.pt"):
        good = (ckpt / name).read_bytes()
        torch.save({"x": _Touch(marker)}, ckpt / name)
        if name == "model.pt":
            code, err = _evaluate(capsys, str(finished_run), "--target-return", "10")
        else:
            code, err = _train(capsys, "--out", str(finished_run), "--resume", "--steps", "6", "--quiet")
        assert code == 2 and len(err) == 1 and "corrupt or truncated" in err[0] and str(ckpt) in err[0], err
        (ckpt / name).write_bytes(good)
    arrays = _hopper_arrays()
    arrays["observations"] = np.array([_Touch(marker)] * len(arrays["rewards"]), dtype=object)
    evil = tmp_path / "evil.npz"
    np.savez(evil, **arrays, allow_pickle=True)
    code, err = _train(capsys, "--dataset", str(evil), "--out", str(tmp_path / "r"), *QUICK)
    assert code == 2 and len(err) == 1, err
    assert f"{evil}: array 'observations' holds Python objects (a pickle), which flowrl never loads" in err[0]
    assert not marker.exists() and not (tmp_path / "r").exists()


def test_the_reliability_page_points_at_tests_that_exist():
    """docs/reliability.md names, for each promise, the test that holds it: every name must exist."""
    import re

    root = Path(__file__).resolve().parents[2]
    page = (root / "docs" / "reliability.md").read_text()
    defined = {
        m for f in (root / "tests").rglob("test_*.py") for m in re.findall(r"^def (test_\w+)", f.read_text(), re.M)
    }
    files = {str(f.relative_to(root)) for f in (root / "tests").rglob("test_*.py")}
    named = set(re.findall(r"\b(test_\w+)\b(?!\.py)", page))
    assert named and not named - defined, sorted(named - defined)
    paths = set(re.findall(r"tests/[\w/]+\.py", page))
    assert paths and not paths - files, sorted(paths - files)
