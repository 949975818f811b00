"""Exit codes of the ``flowrl`` command: only bad input is exit 2; a bug or a system error is exit 1.

Every error is one line on stderr, without a traceback (``FLOWRL_TRACEBACK=1`` asks for one).
"""

from __future__ import annotations

import errno
import json

import numpy as np
import pytest
from flowrl.scripts.cli import UsageError, main

from flowrl.errors import InputError, MissingInputError, OutputExistsError


def _raise(exc: BaseException):
    def boom(*args, **kwargs):
        raise exc

    return boom


def _run(monkeypatch, capsys, exc: BaseException, *, traceback: bool = False) -> tuple[int, list[str]]:
    """``flowrl evaluate X`` with the checkpoint loader raising ``exc``: (exit code, stderr lines)."""
    import flowrl.agents

    monkeypatch.setattr(flowrl.agents, "load_agent", _raise(exc))
    if traceback:
        monkeypatch.setenv("FLOWRL_TRACEBACK", "1")
    else:
        monkeypatch.delenv("FLOWRL_TRACEBACK", raising=False)
    code = main(["evaluate", "some-run", "--quiet"])
    return code, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


@pytest.mark.parametrize(
    "exc",
    [InputError("bad value"), MissingInputError("no such file"), OutputExistsError("x exists"), UsageError("bad flag")],
    ids=["input", "missing", "exists", "usage"],
)
def test_input_errors_exit_2_in_one_line(monkeypatch, capsys, exc):
    code, lines = _run(monkeypatch, capsys, exc)
    assert code == 2
    assert lines == [f"flowrl evaluate: error: {exc}"]


@pytest.mark.parametrize(
    "exc",
    [ValueError("internal"), KeyError("k"), TypeError("t"), RuntimeError("r"), AssertionError()],
    ids=["ValueError", "KeyError", "TypeError", "RuntimeError", "AssertionError"],
)
def test_other_exceptions_are_bugs_exit_1_with_a_hint(monkeypatch, capsys, exc):
    code, lines = _run(monkeypatch, capsys, exc)
    assert code == 1
    assert len(lines) == 1 and "Traceback" not in lines[0]
    assert lines[0].startswith(f"flowrl evaluate: internal error: {type(exc).__name__}")
    assert "a bug in flowrl" in lines[0] and "FLOWRL_TRACEBACK=1" in lines[0]


def test_system_errors_exit_1_and_say_what_happened(monkeypatch, capsys):
    full = OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/.step_00000010.tmp")
    code, lines = _run(monkeypatch, capsys, full)
    assert code == 1
    assert lines == [
        "flowrl evaluate: error: No space left on device: /runs/x/checkpoints/.step_00000010.tmp "
        "(set FLOWRL_TRACEBACK=1 for details)"
    ]
    # a FileNotFoundError that flowrl did not raise for a user's path is not bad input
    code, lines = _run(monkeypatch, capsys, FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"))
    assert code == 1 and len(lines) == 1


def test_traceback_on_request(monkeypatch, capsys):
    code, lines = _run(monkeypatch, capsys, ValueError("internal"), traceback=True)
    assert code == 1
    assert lines[0].startswith("Traceback") and lines[-1] == "ValueError: internal"


def test_input_error_is_a_value_error_and_missing_input_a_file_not_found_error():
    # library callers keep their `except ValueError` / `except FileNotFoundError`
    assert issubclass(InputError, ValueError)
    assert issubclass(MissingInputError, FileNotFoundError) and issubclass(MissingInputError, InputError)
    assert issubclass(OutputExistsError, FileExistsError) and issubclass(UsageError, InputError)


# -------------------------------------------------------------------- the library's validation sites
def _bad_inputs(tmp_path):
    """(name, call, expected exception class): one bad user input per validation site."""
    from flowrl.agents import DecisionTransformerConfig, TrainConfig, load_agent, pick_device
    from flowrl.agents.config import BCConfig, config_from_dict, preset
    from flowrl.agents.distributed import distributed_env, per_rank_batch, rank_device
    from flowrl.envs import TrajectoryDataset, get_spec, load_dataset
    from flowrl.envs.behavior import load_behavior

    from flowrl.models import FlowformerConfig
    from flowrl.models.io import load_model

    def nan_rewards():
        TrajectoryDataset.from_arrays(np.zeros((3, 2)), np.zeros((3, 1)), [0, np.nan, 0], [0, 0, 1], [0, 0, 0])

    bad_json = tmp_path / "agent-bad"
    bad_json.mkdir()
    (bad_json / "agent.json").write_text("{")
    not_npz = tmp_path / "data.npz"
    not_npz.write_text("not a zip")
    return [
        ("dt config", lambda: DecisionTransformerConfig(context=0), InputError),
        ("bc config", lambda: BCConfig(hidden=0), InputError),
        ("unknown field", lambda: DecisionTransformerConfig.from_dict({"dimm": 3}), InputError),
        ("wrong type", lambda: DecisionTransformerConfig.from_dict({"dim": "x"}), InputError),
        ("infinite lr in a file", lambda: DecisionTransformerConfig.from_dict({"lr": float("inf")}), InputError),
        ("infinite lr", lambda: BCConfig(lr=float("inf")), InputError),
        ("missing field", lambda: TrainConfig.from_dict({"target_returns": "abc"}), InputError),
        ("unknown preset", lambda: preset("gpt"), InputError),
        ("unknown algo", lambda: config_from_dict("xgboost", {}), InputError),
        ("train config", lambda: TrainConfig(steps=-1), InputError),
        ("device", lambda: pick_device("tpu"), InputError),
        ("trunk config", lambda: FlowformerConfig(heads=3, dim=8), InputError),
        ("unknown dataset", lambda: load_dataset("nosuch-thing"), InputError),
        ("missing dataset file", lambda: load_dataset(tmp_path / "none.hdf5"), MissingInputError),
        ("not an npz", lambda: load_dataset(not_npz), InputError),
        ("NaN rewards", nan_rewards, InputError),
        ("unknown env", lambda: get_spec("Nope"), InputError),
        ("missing checkpoint", lambda: load_agent(tmp_path / "none"), MissingInputError),
        ("broken agent.json", lambda: load_agent(bad_json), InputError),
        ("missing policy", lambda: load_behavior(tmp_path / "none.pt"), MissingInputError),
        ("missing model", lambda: load_model(tmp_path), MissingInputError),
        ("torchrun variables", lambda: distributed_env({"RANK": "x", "WORLD_SIZE": "2"}), InputError),
        ("torchrun device", lambda: rank_device("cuda:3", 0), InputError),
        ("global batch", lambda: per_rank_batch(7, 2, global_batch=True), InputError),
    ]


def test_every_validation_site_raises_input_error(tmp_path):
    for name, call, expected in _bad_inputs(tmp_path):
        with pytest.raises(expected) as info:
            call()
        assert str(info.value), name


def test_a_bad_dataset_on_the_command_line_is_exit_2(tmp_path, capsys):
    missing = tmp_path / "none.hdf5"
    assert main(["datasets", "info", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"flowrl datasets: error: dataset file {missing} does not exist"
    bad = tmp_path / "cfg.json"
    bad.write_text(json.dumps({"agent": {"context": 0}}))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "context K must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"agent": [1, 2]}', "agent must be a JSON object"),
        ('{"algo": "xgboost"}', "algo must be one of bc, dt, got 'xgboost'"),
        ('{"train": "x"}', "train must be a JSON object"),
        ('{"dataset": 5}', "dataset must be a dataset name or path, got 5"),
        ('{"agent": {"dim": "x"}}', "dim must be an integer, got 'x'"),
        ('{"agent": {"lr": 1e999}}', "lr must be a finite number, got inf"),
        ('{"train": {"target_returns": "abc"}}', "target_returns must be a list of finite numbers"),
        ("[1, 2]", "must be a JSON object with keys"),
        ("{", "is not valid JSON"),
    ],
)
def test_bad_config_files_exit_2_in_one_line(tmp_path, capsys, text, message):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(text)
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "text, message", [('{"agent": {}, "train": {}, "dataset": "x"}', "lacks algo"), ("{", "is not valid JSON")]
)
def test_resume_of_a_broken_run_config_names_the_file(tmp_path, capsys, text, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    assert main(["train", "--out", str(run), "--resume", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err and str(run / "config.json") in err, err
