"""``flowrl bench train`` / ``flowrl bench rollout``: options, tables, and whole runs on tiny models.

d3rlpy is replaced by a stand-in ``run_d3rlpy`` here, so these tests never create its environment; the
real peer is exercised by the slow tests in test_peers.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from flowrl.scripts import bench_rollout, bench_train, benchmarking
from flowrl.scripts.peers import PeerEnvError
from flowrl.scripts.peers.run import build_runner_command

from .conftest import TINY, parse, tiny_hopper_dataset


def _tiny_dataset(path):
    from flowrl.envs import write_d4rl_hdf5

    return write_d4rl_hdf5(path, tiny_hopper_dataset(), compression=None)


@pytest.fixture
def fake_peer(monkeypatch):
    """Stand-in for d3rlpy: records each call and returns fixed numbers."""
    calls = []

    def run_d3rlpy(subcommand, **kwargs):
        calls.append((subcommand, kwargs))
        if subcommand == "train-speed":
            return {"peer": "d3rlpy", "subcommand": subcommand, "steps_per_s": 2.0, "final_loss": 0.5}
        n = kwargs["episodes"]
        return {
            "peer": "d3rlpy",
            "subcommand": subcommand,
            "seconds": 50.0,
            "lengths": [1000] * n,
            "returns": [10.0] * n,
        }

    monkeypatch.setattr("flowrl.scripts.peers.run_d3rlpy", run_d3rlpy)
    monkeypatch.setattr("flowrl.scripts.peers.ensure_d3rlpy_venv", lambda *a, **k: "/fake/python")
    return calls


def test_defaults_are_the_fixed_comparison_size():
    for mod in (bench_train, bench_rollout):
        args = parse(mod, [])
        assert (args.context, args.dim, args.layers, args.heads, args.batch) == (20, 128, 3, 1, 64)
        assert args.variants == list(mod.VARIANTS) and "d3rlpy" in args.variants
    assert parse(bench_rollout, []).episodes == 10 and parse(bench_rollout, []).full_length
    with pytest.raises(SystemExit):
        parse(bench_train, ["--variants", "flow,jax"])
    assert parse(bench_train, ["--variants", "d3rlpy,flow,d3rlpy"]).variants == ["d3rlpy", "flow"]


def test_repeats_rotate_the_order_of_the_variants():
    variants = ["flow", "softmax", "d3rlpy"]
    orders = [benchmarking.rotated(variants, r) for r in range(4)]
    assert orders[:3] == [variants, ["softmax", "d3rlpy", "flow"], ["d3rlpy", "flow", "softmax"]]
    assert orders[3] == variants  # every variant runs first once in every len(variants) repeats


def test_train_table_ratios_are_against_d3rlpy():
    rows = [
        {"variant": "flow", "label": "flow", "steps_per_s": [5.0, 7.0], "median": 6.0, "final_loss": 0.25},
        {"variant": "d3rlpy", "label": "d3rlpy", "steps_per_s": [2.0, 2.0], "median": 2.0, "final_loss": None},
    ]
    text = bench_train.format_train_table(rows)
    flow_line = next(line for line in text.splitlines() if line.startswith("| flow "))
    assert "3.00x" in flow_line and "5.00 7.00" in flow_line and "0.2500" in flow_line
    assert "-" in bench_train.format_train_table(rows[:1]).splitlines()[-1]  # no d3rlpy, no ratio
    # a machine that slows down between repeats: the paired ratio compares runs of the same repeat
    rows[0].update(steps_per_s=[5.0, 7.0, 9.0], median=7.0)
    rows[1].update(steps_per_s=[2.0, 4.0, 3.0], median=3.0)
    cells = next(x for x in bench_train.format_train_table(rows).splitlines() if x.startswith("| flow ")).split("|")
    assert [c.strip() for c in cells[-3:-1]] == ["2.33x", "2.50x"]  # 7 / 3; median of 2.5, 1.75, 3


def test_rollout_table_speedup_is_d3rlpy_time_over_ours():
    rows = [
        {"variant": "flow", "label": "flow", "seconds": [2.0], "median": 2.0, "env_steps": 10000, "returns": [1.0]},
        {
            "variant": "d3rlpy",
            "label": "d3rlpy",
            "seconds": [50.0],
            "median": 50.0,
            "env_steps": 10000,
            "returns": [3.0],
        },
    ]
    line = next(x for x in bench_rollout.format_rollout_table(rows).splitlines() if x.startswith("| flow "))
    assert "25.0x" in line and "5,000" in line and "10,000" in line
    rows[0].update(seconds=[2.0, 4.0, 3.0], median=3.0)
    rows[1].update(seconds=[50.0, 60.0, 30.0], median=50.0)  # paired: 25, 15, 10 -> 15
    cells = next(x for x in bench_rollout.format_rollout_table(rows).splitlines() if x.startswith("| flow ")).split("|")
    assert [c.strip() for c in cells[-3:-1]] == ["16.7x", "15.0x"]


def test_bench_train_runs_every_variant_on_the_same_file(tmp_path, fake_peer, capsys, monkeypatch):
    data = _tiny_dataset(tmp_path / "tiny.hdf5")
    out = tmp_path / "train.json"
    blocks = []  # (steps) of every block of updates flowrl ran: a warm-up before each timed block
    timed = bench_train._time_updates
    monkeypatch.setattr(bench_train, "_time_updates", lambda tr, n: (blocks.append(n), timed(tr, n))[1])
    args = parse(
        bench_train,
        [
            "--dataset",
            str(data),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--variants",
            "flow,softmax,d3rlpy",
            "--json",
            str(out),
            *TINY,
        ],
    )
    assert bench_train.run(args) == 0
    table = capsys.readouterr().out
    assert "flowrl flow-DT fp32" in table and "flowrl softmax-DT" in table and "d3rlpy DT 2.8.1" in table
    assert [c[0] for c in fake_peer] == ["train-speed", "train-speed"]  # one fresh peer run per repeat
    kw = fake_peer[0][1]
    assert kw["dataset"] == data and kw["steps"] == 2 and kw["warmup"] == 1
    assert (kw["context"], kw["dim"], kw["layers"], kw["heads"], kw["batch"]) == (4, 16, 1, 1, 4)
    assert kw["threads"] == 1
    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert len(rows["flow"]["steps_per_s"]) == 2 and rows["d3rlpy"]["median"] == 2.0
    assert np.isfinite(rows["softmax"]["final_loss"])
    assert blocks == [1, 2] * 4  # 2 flowrl variants x 2 repeats, each timed block after its own warm-up


def test_non_hdf5_datasets_reach_d3rlpy_as_a_temporary_d4rl_copy(tmp_path):
    from flowrl.envs import load_dataset, write_npz

    hdf5 = _tiny_dataset(tmp_path / "tiny.hdf5")
    ds = load_dataset(hdf5)
    with benchmarking.d4rl_file(hdf5, ds) as path:
        assert path == hdf5.absolute()  # given as is
    npz = write_npz(tmp_path / "tiny.npz", ds)
    with benchmarking.d4rl_file(npz, ds) as path:
        assert path.suffix == ".hdf5" and path.exists()
        copy = load_dataset(path)
        assert copy.num_transitions == ds.num_transitions and copy.num_episodes == ds.num_episodes
    assert not path.exists()


def test_unavailable_peer_drops_its_row(monkeypatch, capsys):
    def fail(*a, **k):
        raise PeerEnvError("no network to the package index\nmore detail")

    monkeypatch.setattr("flowrl.scripts.peers.ensure_d3rlpy_venv", fail)
    assert benchmarking.require_peer(["flow", "d3rlpy"]) == ["flow"]
    assert "no network to the package index" in capsys.readouterr().err
    assert benchmarking.require_peer(["flow"]) == ["flow"]


def test_full_length_only_for_tasks_that_terminate_early():
    from flowrl.envs import get_spec

    assert bench_rollout._full_length_kwargs(get_spec("hopper")) == {"terminate_when_unhealthy": False}
    assert bench_rollout._full_length_kwargs(get_spec("halfcheetah")) == {}
    argv = build_runner_command("/py", "rollout-speed", "/o.json", full_length=False)
    assert "--no-full-length" in argv


def test_bench_rollout_runs_flowrl_vectorized_and_the_peer(tmp_path, fake_peer, capsys, monkeypatch):
    monkeypatch.setenv("FLOWRL_NATIVE", "0")  # the table and the JSON must report the kernel setting in force
    out = tmp_path / "rollout.json"
    argv = ["--episodes", "3", "--num-envs", "2", "--max-episode-steps", "30", "--json", str(out), *TINY]
    assert bench_rollout.run(parse(bench_rollout, argv)) == 0
    table = capsys.readouterr().out
    assert "speed-up vs d3rlpy" in table and "flowrl flow-DT (staggered)" in table
    ((sub, kw),) = fake_peer
    assert sub == "rollout-speed" and kw["env"] == "Hopper-v5" and kw["episodes"] == 3
    assert kw["target_return"] == 3600.0 and kw["full_length"] is True and kw["model"] is None
    assert kw["max_episode_steps"] == 30 and kw["threads"] == 1
    result = json.loads(out.read_text())
    assert result["native_kernel"] == "off (FLOWRL_NATIVE=0)"
    assert "native decode kernel off (FLOWRL_NATIVE=0)" in table
    rows = {r["variant"]: r for r in result["rows"]}
    for v in ("flow", "flow-staggered", "flow-episode", "softmax"):
        # full length: no untrained hopper falls over early, every episode runs to the limit
        assert len(rows[v]["returns"]) == 3 and rows[v]["env_steps"] == 90
    assert all(len(r["seconds"]) == 1 for r in rows.values())


def test_bench_rollout_workers_split_the_episodes(tmp_path, capsys):
    out = tmp_path / "rollout.json"
    argv = ["--episodes", "3", "--num-envs", "2", "--max-episode-steps", "20", "--workers", "2", "--json", str(out)]
    argv += ["--variants", "flow-episode", *TINY]
    assert bench_rollout.run(parse(bench_rollout, argv)) == 0
    assert "flowrl flow-DT (episode, 2 workers)" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rows"]
    assert row["env_steps"] == 60 and len(row["returns"]) == 3
