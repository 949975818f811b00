"""Shared data for the bench tests."""

from __future__ import annotations

import numpy as np


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
