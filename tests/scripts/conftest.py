"""Shared data, options and fixtures for the bench tests."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

# A tiny DT for the bench commands, on one torch thread: tiny ops are dominated by thread hand-offs, which a
# loaded test machine makes slow.
TINY = ["--context", "4", "--dim", "16", "--layers", "1", "--heads", "1", "--batch", "4", "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    """Bench commands set torch's thread count (``--threads``): every test here leaves it as it found it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def parse(bench, argv: list[str]) -> argparse.Namespace:
    """The options of the bench command module ``bench`` parsed from ``argv``."""
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(argv)


def tiny_hopper_dataset():
    """A Hopper-shaped dataset (11-d states, 3-d actions): 200 random transitions in 4 episodes of 50 steps."""
    from flowrl.envs import TrajectoryDataset

    rng = np.random.default_rng(0)
    n, length = 200, 50
    timeouts = np.zeros(n, bool)
    timeouts[length - 1 :: length] = True
    return TrajectoryDataset.from_arrays(
        rng.normal(size=(n, 11)).astype(np.float32),
        np.tanh(rng.normal(size=(n, 3))).astype(np.float32),
        rng.uniform(0, 3, size=n).astype(np.float32),
        np.zeros(n, bool),
        timeouts,
        {"env_name": "hopper"},
    )
