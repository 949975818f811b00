"""``flowrl bench context``: a whole run on a tiny model (tables, JSON), the peak-memory worker, the issue's
targets computed from the measurements, and bad options refused before anything runs."""

from __future__ import annotations

import json

import pytest
import torch
from flowrl.scripts import bench_context
from flowrl.scripts.cli import main

from .conftest import parse

TINY = ["--dim", "16", "--layers", "1", "--heads", "1", "--batch", "2", "--threads", "1"]
TINY += ["--repeats", "2", "--warmup", "1", "--envs", "2"]


def test_tiny_run_prints_both_tables_and_writes_json(tmp_path, capsys):
    out = tmp_path / "context.json"
    args = parse(bench_context, [*TINY, "--contexts", "4", "8", "--steps", "6", "12", "--bin", "3", "--window", "4"])
    args.json, args.no_memory = str(out), True
    assert bench_context.run(args) == 0
    text = capsys.readouterr().out
    assert "flow ms/update" in text and "softmax ms/update" in text and "ms/step at t=12" in text
    res = json.loads(out.read_text())
    assert [r["K"] for r in res["train"]] == [4, 8]
    assert all(r[a]["ms"] > 0 and len(r[a]["all_ms"]) == 2 for r in res["train"] for a in ("flow", "softmax"))
    variants = [r["variant"] for r in res["rollout"]]
    assert variants == ["flow episode (memory model)", "flow window K=4", "softmax window K=4", "softmax window K=12"]
    assert all(set(r["ms"]) == {"6", "12"} and min(r["ms"].values()) > 0 for r in res["rollout"])
    assert res["targets"] == []  # K=100/1000 and t=100/1000 were not measured


def test_peak_memory_worker_measures_one_update():
    args = parse(bench_context, [*TINY])
    mib = bench_context._peak_memory(args, 8, "flow", torch.device("cpu"))
    assert mib is not None and 0 <= mib < 512


def _row(K, flow_ms, ratio):
    return {"K": K, "flow": {"ms": flow_ms}, "softmax": {"ms": flow_ms * ratio}, "softmax_over_flow": ratio}


@pytest.mark.parametrize(
    "flow_1000, ratio, flat, met",
    [(130.0, 3.0, 1.2, [True, True, True]), (131.0, 2.9, 1.21, [False, False, False])],
)
def test_targets(flow_1000, ratio, flat, met):
    out = {
        "train": [_row(100, 10.0, 1.5), _row(1000, flow_1000, ratio)],
        "rollout": [{"variant": "flow episode (memory model)", "ms": {100: 1.0, 1000: flat}}],
    }
    res = bench_context._targets(out, [100, 1000])
    assert [r["met"] for r in res] == met
    assert all(r["text"].endswith("(met)" if m else "(NOT met)") for r, m in zip(res, met))


def test_bin_longer_than_the_first_step_is_refused(capsys):
    assert main(["bench", "context", "--steps", "10", "100", "--bin", "20"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--bin 20" in err[0]
