"""The d3rlpy peer plumbing: venv location and readiness, runner argv, JSON exchange, failure messages.

Only the ``slow`` tests touch the real d3rlpy environment; the rest use stub interpreters.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flowrl.scripts.peers import d3rlpy_venv as venv_mod
from flowrl.scripts.peers.d3rlpy_venv import PeerEnvError, d3rlpy_venv_dir, ensure_d3rlpy_venv, is_ready
from flowrl.scripts.peers.run import RUNNER, PeerRunError, build_runner_command, peer_environ, read_result, run_d3rlpy


def _load_runner():
    spec = importlib.util.spec_from_file_location("d3rlpy_runner_under_test", RUNNER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stub_python(tmp_path: Path, body: str) -> Path:
    """An executable that stands in for the peer's python: ``argv[1]`` is the runner path, then its args."""
    path = tmp_path / "stub-python"
    path.write_text(f"#!{sys.executable}\nimport json, os, sys\nargs = sys.argv[1:]\n{body}\n")
    path.chmod(0o755)
    return path


# ------------------------------------------------------------------------------------------ venv location
def test_venv_dir_follows_env_var_and_defaults_to_user_cache(tmp_path):
    assert d3rlpy_venv_dir({"FLOWRL_PEERS_DIR": str(tmp_path)}) == tmp_path / "d3rlpy-2.8.1"
    assert d3rlpy_venv_dir({}) == Path("~/.cache/flowrl/peers/d3rlpy-2.8.1").expanduser()


def test_missing_venv_without_create_says_how_to_make_it(tmp_path):
    with pytest.raises(PeerEnvError, match=r"python -m flowrl\.scripts\.peers\.d3rlpy_venv"):
        ensure_d3rlpy_venv(tmp_path / "nothing-here", create=False)
    assert not (tmp_path / "nothing-here").exists()


def test_ready_needs_interpreter_and_a_marker_for_the_current_pins(tmp_path):
    venv = tmp_path / "v"
    py = venv_mod.venv_python(venv)
    py.parent.mkdir(parents=True)
    py.write_text("")
    assert not is_ready(venv)  # no marker: creation never finished
    (venv / venv_mod.MARKER).write_text(json.dumps(venv_mod._wanted_marker()))
    assert is_ready(venv)
    assert ensure_d3rlpy_venv(venv, create=False) == py
    stale = {**venv_mod._wanted_marker(), "requirements": ["d3rlpy==2.7.0"]}
    (venv / venv_mod.MARKER).write_text(json.dumps(stale))
    assert not is_ready(venv)
    (venv / venv_mod.MARKER).write_text("{not json")
    assert not is_ready(venv)


def test_failed_creation_reports_the_step_and_output_tail(tmp_path):
    bad = _stub_python(tmp_path, "print('no space left on device', file=sys.stderr); sys.exit(3)")
    messages = []
    with pytest.raises(PeerEnvError) as err:
        venv_mod.create_d3rlpy_venv(tmp_path / "v", base_python=str(bad), log=messages.append)
    msg = str(err.value)
    assert "creating the virtual environment" in msg and "exit 3" in msg
    assert "no space left on device" in msg
    assert not is_ready(tmp_path / "v")
    assert messages and "first use" in messages[0]


def test_creation_refuses_a_folder_that_is_not_a_venv(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "precious.txt").write_text("x")
    with pytest.raises(PeerEnvError, match="not a virtual environment"):
        venv_mod.create_d3rlpy_venv(tmp_path / "v", log=lambda m: None)
    assert (tmp_path / "v" / "precious.txt").exists()


# ------------------------------------------------------------------------------------------ runner argv
def test_runner_command_maps_keywords_to_flags():
    argv = build_runner_command(
        "/py",
        "scores",
        "/o.json",
        dataset=Path("/d.hdf5"),
        steps=100,
        seed=0,
        target_return=[3600, 1800.5],
        compile=True,
        save_model=None,
        full_length=False,
    )
    assert argv[:3] == ["/py", str(RUNNER), "scores"]
    assert argv[3:] == [
        "--dataset",
        "/d.hdf5",
        "--steps",
        "100",
        "--seed",
        "0",
        "--target-return",
        "3600",
        "1800.5",
        "--compile",
        "--no-full-length",
        "--json",
        "/o.json",
    ]


def test_runner_command_rejects_unknown_subcommand_and_json_keyword():
    with pytest.raises(ValueError, match="train-speed"):
        build_runner_command("/py", "train", "/o.json")
    with pytest.raises(ValueError, match="json_path"):
        build_runner_command("/py", "scores", "/o.json", json="/other.json")


def test_runner_parser_accepts_every_flag_the_helper_builds():
    runner = _load_runner()
    argv = build_runner_command(
        "/py",
        "scores",
        "/o.json",
        dataset="/d.hdf5",
        steps=10,
        seed=2,
        env="Hopper-v5",
        target_return=[3600, 1800],
        threads=2,
        context=20,
        dim=128,
        layers=3,
        heads=1,
        batch=64,
    )
    args = runner._parser().parse_args(argv[2:])
    assert (args.command, args.steps, args.seed, args.target_return, args.threads) == (
        "scores",
        10,
        2,
        [3600.0, 1800.0],
        2,
    )
    assert (args.context, args.dim, args.layers, args.heads, args.batch) == (20, 128, 3, 1, 64)
    rollout = runner._parser().parse_args(["rollout-speed"])
    assert rollout.full_length and rollout.episodes == 10 and rollout.env == "Hopper-v5"
    assert not runner._parser().parse_args(["rollout-speed", "--no-full-length"]).full_length


def test_runner_imports_nothing_from_flowrl():
    allowed = {
        "__future__",
        "argparse",
        "json",
        "os",
        "statistics",
        "sys",
        "time",
        "pathlib",
        "d3rlpy",
        "numpy",
        "h5py",
        "gymnasium",
        "torch",
        "mujoco",
    }
    tree = ast.parse(RUNNER.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert names <= allowed, names - allowed


def test_runner_windows_are_steps_per_second_of_equal_slices():
    runner = _load_runner()
    times = [0.0, 1.0, 2.0, 2.5, 3.0]  # 4 steps: two at 1 s, two at 0.5 s
    assert runner._windows(times, 2) == [1.0, 2.0]
    assert runner._windows(times, 1) == [4 / 3.0]
    assert runner._windows(times, 99) == [1.0, 1.0, 2.0, 2.0]  # at most one window per step
    assert runner._windows([0.0], 3) == []


# ------------------------------------------------------------------------------------------ JSON exchange
def test_read_result_checks_peer_and_subcommand(tmp_path):
    p = tmp_path / "r.json"
    with pytest.raises(PeerRunError, match="no result file"):
        read_result(p)
    p.write_text("{oops")
    with pytest.raises(PeerRunError, match="not valid JSON"):
        read_result(p)
    p.write_text(json.dumps({"peer": "other"}))
    with pytest.raises(PeerRunError, match="d3rlpy"):
        read_result(p)
    p.write_text(json.dumps({"peer": "d3rlpy", "subcommand": "scores", "steps_per_s": 12.5}))
    with pytest.raises(PeerRunError, match="expected 'train-speed'"):
        read_result(p, "train-speed")
    assert read_result(p, "scores")["steps_per_s"] == 12.5


def test_run_passes_threads_and_hides_flowrl_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/somewhere/flowrl")
    stub = _stub_python(
        tmp_path,
        (
            "out = args[args.index('--json') + 1]\n"
            "json.dump({'peer': 'd3rlpy', 'subcommand': args[1], 'argv': args, 'cwd': os.getcwd(),\n"
            "           'omp': os.environ.get('OMP_NUM_THREADS'), 'pythonpath': os.environ.get('PYTHONPATH')},\n"
            "          open(out, 'w'))"
        ),
    )
    result = run_d3rlpy("train-speed", python=stub, threads=3, dataset="/d.hdf5", steps=7)
    assert result["argv"][0] == str(RUNNER) and result["argv"][1] == "train-speed"
    assert result["argv"][result["argv"].index("--threads") + 1] == "3"
    assert result["argv"][result["argv"].index("--steps") + 1] == "7"
    assert result["omp"] == "3" and result["pythonpath"] is None
    assert not Path(result["cwd"]).exists()  # ran in a scratch folder that is gone


def test_run_failure_carries_the_runners_stderr(tmp_path):
    stub = _stub_python(tmp_path, "print('KeyError: observations', file=sys.stderr); sys.exit(1)")
    with pytest.raises(PeerRunError, match="KeyError: observations") as err:
        run_d3rlpy("scores", python=stub, threads=1, dataset="/d.hdf5", steps=1, target_return=[1.0])
    assert "exit 1" in str(err.value)


def test_run_without_json_output_is_an_error(tmp_path):
    stub = _stub_python(tmp_path, "pass")
    with pytest.raises(PeerRunError, match="no result file"):
        run_d3rlpy("rollout-speed", python=stub, threads=1)


def test_run_with_missing_python_is_an_error(tmp_path):
    with pytest.raises(PeerRunError, match="does not exist"):
        run_d3rlpy("rollout-speed", python=tmp_path / "bin" / "python")


def test_run_without_venv_and_without_create_raises(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWRL_PEERS_DIR", str(tmp_path))
    with pytest.raises(PeerEnvError, match="not found"):
        run_d3rlpy("rollout-speed", create=False)


def test_peer_environ_pins_threads():
    env = peer_environ(2, {"PATH": "/bin", "PYTHONHOME": "/x", "VIRTUAL_ENV": "/y"})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2"
    assert "PYTHONHOME" not in env and "VIRTUAL_ENV" not in env and env["PATH"] == "/bin"


# ------------------------------------------------------------------------------------------ real d3rlpy
def _tiny_d4rl(path: Path, episodes: int = 6, length: int = 40) -> Path:
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    n = episodes * length
    term = np.zeros(n, bool)
    tout = np.zeros(n, bool)
    term[length - 1 :: 2 * length] = True
    tout[2 * length - 1 :: 2 * length] = True
    with h5py.File(path, "w") as f:
        f["observations"] = rng.normal(size=(n, 11)).astype(np.float32)
        f["actions"] = rng.uniform(-1, 1, size=(n, 3)).astype(np.float32)
        f["rewards"] = rng.uniform(0, 3, size=n).astype(np.float32)
        f["terminals"] = term
        f["timeouts"] = tout
    return path


def _real_venv_or_skip() -> Path:
    venv = d3rlpy_venv_dir()
    if not is_ready(venv):
        pytest.skip(f"d3rlpy environment not created at {venv} (python -m flowrl.scripts.peers.d3rlpy_venv)")
    return venv_mod.venv_python(venv)


@pytest.mark.slow
def test_real_d3rlpy_trains_saves_and_rolls_out(tmp_path):
    py = _real_venv_or_skip()
    data = _tiny_d4rl(tmp_path / "tiny.hdf5")
    model = tmp_path / "dt.d3"
    train = run_d3rlpy(
        "train-speed", python=py, threads=1, dataset=data, steps=6, warmup=2, repeats=2, save_model=model, timeout=300
    )
    assert train["steps"] == 6 and train["steps_per_s"] > 0 and len(train["steps_per_s_windows"]) == 2
    assert train["dataset"]["episodes"] == 6 and np.isfinite(train["final_loss"])
    assert train["model"] == {
        "context": 20,
        "dim": 128,
        "layers": 3,
        "heads": 1,
        "batch": 64,
        "max_timestep": 1000,
        "device": "cpu:0",
        "compile": False,
        "seed": 0,
    }
    assert train["versions"]["d3rlpy"] == "2.8.1" and train["versions"]["torch_threads"] == 1
    roll = run_d3rlpy("rollout-speed", python=py, threads=1, episodes=2, model=model, timeout=300)
    assert roll["model_source"] == "trained" and roll["episodes"] == 2
    assert roll["lengths"] == [1000, 1000] and roll["env_steps"] == 2000  # full-length: no early end
    scores = run_d3rlpy(
        "scores",
        python=py,
        threads=1,
        dataset=data,
        steps=3,
        env="Hopper-v5",
        target_return=[3600],
        episodes=1,
        timeout=300,
    )
    assert len(scores["evaluations"]) == 1 and len(scores["evaluations"][0]["returns"]) == 1
    assert 1 <= scores["evaluations"][0]["lengths"][0] <= 1000


def test_no_peer_import_leaks_into_flowrl(tmp_path):
    """flowrl's side never imports d3rlpy, even where one is importable: everything d3rlpy goes through the
    runner in the peer's own interpreter. A stand-in ``d3rlpy`` package on the path records any import."""
    fake = tmp_path / "site" / "d3rlpy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("import os\nopen(os.environ['D3RLPY_IMPORTED'], 'w').close()\n")
    marker = tmp_path / "imported"
    code = (
        "import os, sys\n"
        "import d3rlpy  # the stand-in is importable and leaves its mark: the check below can fail\n"
        "os.remove(os.environ['D3RLPY_IMPORTED']); del sys.modules['d3rlpy']\n"
        "from flowrl.scripts.cli import build_parser\n"
        "from flowrl.scripts import bench_rollout, bench_scores, bench_train, benchmarking, peers\n"
        "build_parser()\n"
        "bench_scores.peer_takes_warmup()  # reads the runner's parser in this process\n"
        "peers.d3rlpy_venv_dir()\n"
        "assert 'd3rlpy' not in sys.modules, 'd3rlpy imported'\n"
    )
    path = os.pathsep.join(filter(None, [str(fake.parent), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "D3RLPY_IMPORTED": str(marker)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
