"""``flowrl bench seeds`` on a tiny model: every variant measured in every repeat, ratios against one run at
a time, the table and the JSON."""

from __future__ import annotations

import argparse
import json

import pytest
from flowrl.scripts import bench_seeds

from .conftest import TINY, parse, tiny_hopper_dataset


def test_seed_counts_are_parsed_sorted_and_checked():
    assert bench_seeds._seed_counts("5,1,2,5") == [1, 2, 5]
    for bad in ("0,2", "", "two"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench_seeds._seed_counts(bad)


def test_every_variant_every_repeat_and_ratios_to_one_run_at_a_time(tmp_path, capsys):
    from flowrl.envs import write_d4rl_hdf5

    data = write_d4rl_hdf5(tmp_path / "tiny.hdf5", tiny_hopper_dataset(), compression=None)
    out = tmp_path / "seeds.json"
    argv = ["--dataset", str(data), "--seeds-list", "1,3", "--attention", "flow"]
    args = parse(bench_seeds, [*argv, "--steps", "2", "--warmup", "1", "--repeats", "2", "--json", str(out), *TINY])
    assert bench_seeds.run(args) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["seeds"]) for r in rows] == [("separate", 1), ("S=1", 1), ("S=3", 3)]
    base = rows[0]["median"]
    for r in rows:
        assert len(r["seed_updates_per_s"]) == 2 and all(x > 0 for x in r["seed_updates_per_s"])
        assert r["vs_separate"] == pytest.approx(r["median"] / base)
    printed = capsys.readouterr().out
    assert "| flow      | 3 seeds batched" in printed and "one run at a time" in printed
