"""scripts/device_check.py: its CPU-testable parts. A full --quick run at toy sizes on the CPU writes every
table; without CUDA the real run stops with one line; a used --out folder is refused."""

from __future__ import annotations

import pytest
import torch
from flowrl.envs import load_dataset
from flowrl.scripts import device_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_one_line_exit_2(tmp_path, capsys):
    assert device_check.main(["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["device_check: error: device 'cuda' requested but CUDA is not available; use --device cpu"]
    assert not (tmp_path / "o").exists()


def test_refuses_a_used_out_folder_and_unknown_steps(tmp_path, capsys):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("mine")
    assert device_check.main(["--out", str(tmp_path / "used"), "--device", "cpu", "--quick"]) == 2
    assert device_check.main(["--out", str(tmp_path / "n"), "--device", "cpu", "--quick", "--skip", "gpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("device_check: error: --out") and "unknown step(s) ['gpu']" in err[1]
    assert (tmp_path / "used" / "x").read_text() == "mine"


def test_synthetic_dataset_loads(tmp_path):
    ds = load_dataset(device_check.synthetic_dataset(tmp_path / "s.hdf5", 2500, episode=1000))
    assert len(ds.observations) == 2500 and list(ds.episode_lengths) == [1000, 1000, 500]


def test_attention_table_from_a_cpu_run():
    rows = device_check.attention_rows(torch.device("cpu"), [32], B=1, H=1, D=16, repeats=1)
    assert [r["method"] for r in rows] == ["flow (native)", "flow (torch operators)", "softmax SDPA causal"]
    assert all(r["ms"] is not None and r["ms"] > 0 for r in rows), rows
    table = device_check.attention_table(rows)
    assert table.count("\n") == 5 and "| 32 | softmax SDPA causal |" in table and "1.00x" in table


@pytest.mark.slow
def test_quick_run_writes_every_table(tmp_path):
    out = tmp_path / "check"
    code = device_check.main(["--out", str(out), "--device", "cpu", "--quick", "--skip", "pytest"])
    summary = (out / "summary.md").read_text()
    assert code == 0, summary + (out / "train.md").read_text()
    for name in ("env.md", "attention.md", "train.md", "summary.md"):
        assert (out / name).stat().st_size > 0
    assert "flow-DT" in (out / "train.md").read_text()
