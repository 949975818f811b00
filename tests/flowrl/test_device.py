"""--device: a device that this machine lacks, a CUDA index that does not exist, bf16 on a GPU without it: one
line naming the problem, exit 2, before any work."""

from __future__ import annotations

import pytest
import torch
from flowrl.agents import TrainConfig, pick_device
from flowrl.agents.trainer import check_bf16
from flowrl.scripts.cli import main

from flowrl.errors import InputError


def _fake_cuda(monkeypatch, count=1, bf16=True):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")


def test_cuda_without_cuda_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available; use --device cpu"):
        pick_device("cuda")


def test_a_cuda_index_that_does_not_exist(monkeypatch):
    _fake_cuda(monkeypatch, count=2)
    assert pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(InputError, match=r"'cuda:2' does not exist: this machine has 2 CUDA device\(s\)"):
        pick_device("cuda:2")


def test_bf16_on_a_gpu_without_bf16(monkeypatch):
    _fake_cuda(monkeypatch, bf16=False)
    with pytest.raises(InputError, match="Tesla V100 does not support bfloat16"):
        check_bf16(torch.device("cuda"))
    with pytest.raises(InputError, match="does not support bfloat16"):
        TrainConfig(device="cuda", bf16=True)
    TrainConfig(device="cuda", bf16=False)
    check_bf16(torch.device("cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_bench_train_device_cuda_without_cuda_exits_2(capsys, tmp_path):
    code = main(["bench", "train", "--device", "cuda", "--dataset", str(tmp_path / "never-read.hdf5")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == ["flowrl bench: error: device 'cuda' requested but CUDA is not available; use --device cpu"]
