"""``flowrl bench scores``: options, the warmup rule, aggregation, and whole runs on a tiny dataset and model.

d3rlpy is replaced by a stand-in ``run_d3rlpy`` that returns fixed raw returns, so these tests never create its
environment; the real peer is exercised by the slow tests in test_peers.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flowrl.envs import normalized_score
from flowrl.scripts import bench_scores
from flowrl.scripts.peers import PeerEnvError, PeerRunError

from .conftest import TINY, parse, tiny_hopper_dataset

PEER_RETURNS = [100.0, 300.0]


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A Hopper-shaped .npz (11-d states, 3-d actions): d3rlpy must get it as a temporary D4RL .hdf5."""
    from flowrl.envs import write_npz

    return write_npz(tmp_path_factory.mktemp("data") / "tiny-hopper.npz", tiny_hopper_dataset())


@pytest.fixture
def fake_peer(monkeypatch):
    """Stand-in for d3rlpy's ``scores`` command: records each call and returns fixed raw returns."""
    calls = []

    def run_d3rlpy(subcommand, **kwargs):
        calls.append((subcommand, kwargs))
        assert Path(kwargs["dataset"]).suffix == ".hdf5" and Path(kwargs["dataset"]).is_file()
        evals = [
            {"target_return": t, "returns": PEER_RETURNS, "lengths": [20, 30], "seconds": 0.5}
            for t in kwargs["target_return"]
        ]
        return {
            "peer": "d3rlpy",
            "subcommand": subcommand,
            "steps": kwargs["steps"],
            "train_seconds": 2.0,
            "final_loss": 1.5,
            "evaluations": evals,
        }

    monkeypatch.setattr("flowrl.scripts.peers.run_d3rlpy", run_d3rlpy)
    monkeypatch.setattr("flowrl.scripts.peers.ensure_d3rlpy_venv", lambda *a, **k: "/fake/python")
    return calls


def test_defaults_are_d4rl_names_and_the_dt_preset():
    args = parse(bench_scores, [])
    # names that resolve through D4RL's cache, never a path relative to where the package happens to live
    assert args.datasets == ["hopper-medium-v2", "hopper-medium-replay-v2", "halfcheetah-medium-v2"]
    assert args.algos == ["flow-dt", "softmax-dt", "bc", "d3rlpy"]
    assert (args.context, args.dim, args.layers, args.heads, args.batch) == (20, 128, 3, 1, 64)
    assert parse(bench_scores, ["--algos", "bc,flow-dt,bc"]).algos == ["bc", "flow-dt"]
    with pytest.raises(SystemExit):
        parse(bench_scores, ["--algos", "flow-dt,cql"])


def test_warmup_is_the_recipes_10k_capped_at_a_tenth_of_the_budget():
    assert [bench_scores.dt_warmup(s) for s in (5, 300, 400, 100_000, 500_000)] == [0, 30, 40, 10_000, 10_000]


def test_the_runner_is_read_for_a_warmup_option(tmp_path, monkeypatch):
    assert bench_scores.peer_takes_warmup() is True  # the runner shipped beside it has --warmup-steps
    old = tmp_path / "old_runner.py"  # a runner whose scores command has no such option
    old.write_text(
        "import argparse\n"
        "def _parser():\n"
        "    p = argparse.ArgumentParser()\n"
        "    sub = p.add_subparsers(dest='command')\n"
        "    sub.add_parser('scores').add_argument('--steps')\n"
        "    return p\n"
    )
    monkeypatch.setattr("flowrl.scripts.peers.run.RUNNER", old)
    assert bench_scores.peer_takes_warmup() is False


def test_cells_average_seeds_with_their_standard_error_or_the_one_seeds_episode_spread():
    runs = [
        {"dataset": "a", "algo": "bc", "seed": 0, "normalized": [10.0, 20.0], "score": 15.0},
        {"dataset": "a", "algo": "bc", "seed": 1, "normalized": [30.0, 40.0], "score": 35.0},
        {"dataset": "a", "algo": "flow-dt", "seed": 0, "normalized": [10.0, 30.0], "score": 20.0},
        {"dataset": "a", "algo": "d3rlpy", "seed": 0, "error": "boom"},
    ]
    cells = bench_scores.summarize(runs)
    std = float(np.std([15.0, 35.0], ddof=1))
    assert cells["a"]["bc"] == {
        "mean": 25.0,
        "se": pytest.approx(std / np.sqrt(2)),
        "std": pytest.approx(std),
        "n": 2,
        "std_over": "seeds",
        "scores": {"0": 15.0, "1": 35.0},
    }
    one = {"mean": 20.0, "se": 10.0, "std": 10.0, "n": 1, "std_over": "episodes", "scores": {"0": 20.0}}
    assert cells["a"]["flow-dt"] == one
    assert "d3rlpy" not in cells["a"]
    text = bench_scores.format_scores_table(cells, ["a", "b"], ["flow-dt", "bc", "d3rlpy"])
    header, _, row_a, row_b = text.splitlines()
    assert [c.strip() for c in header.split("|")[1:-1]] == ["dataset", "flowrl flow-DT", "flowrl BC", "d3rlpy DT"]
    assert "20.0 ± 10.0 (1 seed)" in row_a and "25.0 ± 10.0 (2 seeds)" in row_a
    assert row_a.rstrip(" |").endswith("-") and row_b.count("-") == 3
    odd = bench_scores.format_scores_table(cells, ["a"], ["d3rlpy"], peer_warmup=10_000).splitlines()[0]
    assert "d3rlpy DT (warmup 10000)" in odd


def _result(algos, runs, steps=2000, bf16=False, peer_warmup=None):
    return {
        "bench": "scores",
        "steps": steps,
        "model": {"context": 20, "dim": 128, "layers": 3, "heads": 1, "batch": 64},
        "eval_episodes": 10,
        "warmup_steps": {"dt": 200, "d3rlpy": peer_warmup, "bc": 0},
        "algos": algos,
        "bc": {"layers": 2, "hidden": 256, "batch_size": 256},
        "bf16": bf16,
        "machine": "m",
        "datasets": [
            {"name": n, "env": "Hopper-v5", "target_return": 3600.0} for n in dict.fromkeys(r["dataset"] for r in runs)
        ],
        "runs": runs,
    }


def _run(algo, seed, score, dataset="a"):
    return {"dataset": dataset, "algo": algo, "seed": seed, "normalized": [score, score], "score": score}


def test_merge_prints_one_table_from_separate_runs(tmp_path, capsys):
    files = {
        "fl.json": _result(["flow-dt", "bc"], [_run("flow-dt", 0, 10.0), _run("bc", 0, 5.0)], bf16=True),
        "more.json": _result(["flow-dt"], [_run("flow-dt", 1, 30.0), _run("flow-dt", 0, 7.0, dataset="b")], bf16=True),
        "d3.json": _result(["d3rlpy"], [_run("d3rlpy", 0, 50.0), _run("d3rlpy", 1, 70.0)], peer_warmup=200),
    }
    for name, res in files.items():
        (tmp_path / name).write_text(json.dumps(res))
    paths = [str(tmp_path / n) for n in files]
    out = tmp_path / "merged.json"
    assert bench_scores.run(parse(bench_scores, ["--merge", *paths, "--json", str(out)])) == 0
    text = capsys.readouterr().out
    row_a = next(line for line in text.splitlines() if line.startswith("| a "))
    assert "20.0 ± 10.0 (2 seeds)" in row_a and "60.0 ± 10.0 (2 seeds)" in row_a and "5.0 ± 0.0 (1 seed)" in row_a
    assert next(line for line in text.splitlines() if line.startswith("| b ")).count("-") == 2
    assert "flowrl in bf16" in text
    merged = json.loads(out.read_text())
    assert merged["algos"] == ["flow-dt", "bc", "d3rlpy"] and merged["seeds"] == [0, 1]
    assert merged["merged_from"] == paths and len(merged["runs"]) == 6

    (tmp_path / "other.json").write_text(json.dumps(_result(["bc"], [_run("bc", 3, 1.0)], steps=1000)))
    with pytest.raises(ValueError, match=r"steps differs between .*fl.json \(2000\) and .*other.json \(1000\)"):
        bench_scores.run(parse(bench_scores, ["--merge", paths[0], str(tmp_path / "other.json")]))
    (tmp_path / "fp32.json").write_text(json.dumps(_result(["bc"], [_run("bc", 3, 1.0)])))
    with pytest.raises(ValueError, match=r"flowrl ran in bf16 in .*fl.json but in fp32 in .*fp32.json"):
        bench_scores.run(parse(bench_scores, ["--merge", paths[0], str(tmp_path / "fp32.json"), paths[2]]))
    with pytest.raises(ValueError, match="a flow-dt seed 0 is in both"):
        bench_scores.run(parse(bench_scores, ["--merge", paths[0], paths[0]]))
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a `flowrl bench scores --json` file"):
        bench_scores.run(parse(bench_scores, ["--merge", str(tmp_path / "x.json")]))
    with pytest.raises(ValueError, match="cannot read"):
        bench_scores.run(parse(bench_scores, ["--merge", str(tmp_path / "missing.json")]))


def test_every_algo_trains_on_every_dataset_and_seed_with_one_budget(tmp_path, tiny_npz, fake_peer, capsys):
    out, runs_root = tmp_path / "scores.json", tmp_path / "runs"
    argv = ["--datasets", str(tiny_npz), "--steps", "3", "--seeds", "2", "--eval-episodes", "1", "--num-envs", "1"]
    algos = ["--algos", ",".join(bench_scores.ALGOS)]
    args = parse(bench_scores, [*argv, *algos, "--out", str(runs_root), "--json", str(out), *TINY])
    assert bench_scores.run(args) == 0
    captured = capsys.readouterr()
    # flowrl trains both seeds of an algo as one batched run, d3rlpy one process per seed
    assert "[1/5] tiny-hopper flowrl flow-DT seeds 0-1 (one batched run): training" in captured.err
    assert "[5/5] tiny-hopper d3rlpy DT seed 1:" in captured.err
    assert "tiny-hopper flowrl flow-DT (staggered rollout) seed 1 (of 2 batched):" in captured.err

    # d3rlpy: one call per seed, same budget, size, target and threads as flowrl's side
    assert [c[0] for c in fake_peer] == ["scores", "scores"]
    assert [c[1]["seed"] for c in fake_peer] == [0, 1]
    kw = fake_peer[0][1]
    assert (kw["steps"], kw["env"], kw["target_return"], kw["episodes"], kw["threads"]) == (
        3,
        "Hopper-v5",
        [3600.0],
        1,
        1,
    )
    assert (kw["context"], kw["dim"], kw["layers"], kw["heads"], kw["batch"]) == (4, 16, 1, 1, 4)
    assert Path(kw["save_model"]).is_relative_to(runs_root)

    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["seeds"] == [0, 1]
    # the runner takes --warmup-steps (checked above), so d3rlpy warms up as flowrl's DTs do: steps // 10 = 0
    assert result["warmup_steps"] == {"dt": 0, "d3rlpy": 0, "bc": 0}
    assert kw["warmup_steps"] == 0
    assert result["datasets"][0]["target_return"] == 3600.0
    runs = {(r["algo"], r["seed"]): r for r in result["runs"]}
    assert set(runs) == {(a, s) for a in bench_scores.ALGOS for s in (0, 1)}
    for r in runs.values():
        assert r["steps"] == 3
        assert r["returns"] == PEER_RETURNS if r["algo"] == "d3rlpy" else len(r["returns"]) == 1
        np.testing.assert_allclose(r["normalized"], normalized_score("hopper", r["returns"]))
        assert r["score"] == pytest.approx(np.mean(r["normalized"]))
    assert runs[("bc", 0)]["target_return"] is None and runs[("flow-dt", 0)]["target_return"] == 3600.0
    assert runs[("flow-dt-staggered", 0)]["rollout"] == "staggered"
    assert runs[("flow-dt-staggered", 0)]["train_seconds"] == runs[("flow-dt", 0)]["train_seconds"]
    for algo in ("flow-dt", "softmax-dt", "bc"):
        assert runs[(algo, 1)]["seeds_batched"] == 2
        assert runs[(algo, 1)]["curve"]["eval_step"] == [3] and len(runs[(algo, 1)]["curve"]["eval_score"]) == 1
    with pytest.raises(ValueError, match="add flow-dt"):
        bench_scores.run(parse(bench_scores, [*argv, "--algos", "flow-dt-staggered,bc", *TINY]))

    # flowrl's DTs: the same size, warmup steps//10, in run folders under --out
    for algo, attention in (("flow-dt", "flow"), ("softmax-dt", "softmax")):
        agent = json.loads(next((runs_root / "tiny-hopper" / algo / "seed_1").rglob("agent.json")).read_text())
        cfg = agent["config"]
        assert (cfg["attention"], cfg["context"], cfg["dim"], cfg["depth"], cfg["warmup_steps"]) == (
            attention,
            4,
            16,
            1,
            0,
        )

    # the table: a row per dataset, a column per algo, two seeds each; the d3rlpy cell is its fixed returns
    cells = result["table"]["tiny-hopper"]
    assert {c["n"] for c in cells.values()} == {2}
    assert cells["d3rlpy"]["mean"] == pytest.approx(np.mean(normalized_score("hopper", PEER_RETURNS)))
    assert cells["d3rlpy"]["std"] == 0.0
    row = next(line for line in captured.out.splitlines() if line.startswith("| tiny-hopper"))
    assert row.count("(2 seeds)") == 5
    assert "d3rlpy DT (warmup" not in captured.out  # same warmup as flowrl: no note in the header
    assert all(r["loadavg_1m"] is None or r["loadavg_1m"] >= 0 for r in runs.values())


def test_a_failed_d3rlpy_run_is_recorded_and_the_others_still_count(tmp_path, tiny_npz, fake_peer, monkeypatch):
    def failing(subcommand, **kwargs):
        raise PeerRunError("d3rlpy scores failed (exit 1)\nTraceback ...")

    monkeypatch.setattr("flowrl.scripts.peers.run_d3rlpy", failing)
    out = tmp_path / "scores.json"
    argv = ["--datasets", str(tiny_npz), "--algos", "bc,d3rlpy", "--steps", "2", "--seeds", "1"]
    args = parse(bench_scores, [*argv, "--eval-episodes", "1", "--num-envs", "1", "--json", str(out), *TINY])
    assert bench_scores.run(args) == 0
    result = json.loads(out.read_text())
    failed = next(r for r in result["runs"] if r["algo"] == "d3rlpy")
    assert failed["error"].startswith("d3rlpy scores failed") and "normalized" not in failed
    assert list(result["table"]["tiny-hopper"]) == ["bc"]
    # --first-seed: more seeds for a finished run, or seeds split across processes
    args = parse(
        bench_scores, [*argv, "--first-seed", "5", "--eval-episodes", "1", "--num-envs", "1", "--json", str(out), *TINY]
    )
    assert bench_scores.run(args) == 0
    result = json.loads(out.read_text())
    assert result["seeds"] == [5] and {r["seed"] for r in result["runs"]} == {5}


def test_d3rlpy_is_dropped_with_a_warning_without_its_environment(tmp_path, tiny_npz, monkeypatch, capsys):
    def no_venv(*a, **k):
        raise PeerEnvError("cannot create the d3rlpy environment: no package index")

    monkeypatch.setattr("flowrl.scripts.peers.ensure_d3rlpy_venv", no_venv)
    monkeypatch.setattr("flowrl.scripts.peers.run_d3rlpy", lambda *a, **k: pytest.fail("d3rlpy must not run"))
    out = tmp_path / "scores.json"
    argv = ["--datasets", str(tiny_npz), "--algos", "bc,d3rlpy", "--steps", "2", "--seeds", "1"]
    args = parse(bench_scores, [*argv, "--eval-episodes", "1", "--num-envs", "1", "--json", str(out), *TINY])
    assert bench_scores.run(args) == 0
    assert "warning: d3rlpy is unavailable" in capsys.readouterr().err
    result = json.loads(out.read_text())
    assert result["algos"] == ["bc"] and result["warmup_steps"]["d3rlpy"] is None


def test_d3rlpy_gets_the_same_warmup_once_its_runner_takes_one(tmp_path, tiny_npz, fake_peer, monkeypatch, capsys):
    monkeypatch.setattr(bench_scores, "peer_takes_warmup", lambda: True)
    argv = ["--datasets", str(tiny_npz), "--algos", "d3rlpy", "--steps", "40", "--seeds", "1"]
    assert bench_scores.run(parse(bench_scores, [*argv, "--eval-episodes", "1", *TINY])) == 0
    assert fake_peer[0][1]["warmup_steps"] == 4
    # a runner without the option keeps d3rlpy's fixed 10k warmup, and the run says so
    monkeypatch.setattr(bench_scores, "peer_takes_warmup", lambda: False)
    out = tmp_path / "old.json"
    assert bench_scores.run(parse(bench_scores, [*argv, "--eval-episodes", "1", "--json", str(out), *TINY])) == 0
    assert "warmup_steps" not in fake_peer[1][1]
    assert json.loads(out.read_text())["warmup_steps"]["d3rlpy"] == 10_000
    assert "d3rlpy keeps its 10000-step warmup" in capsys.readouterr().err
