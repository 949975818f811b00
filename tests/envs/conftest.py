"""Fixtures for flowrl.envs tests: every test runs offline with private, empty dataset folders."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _offline_data_dirs(tmp_path_factory, monkeypatch):
    """Point Minari and the D4RL cache at fresh temp folders and forbid hub downloads."""
    root = tmp_path_factory.mktemp("data_dirs")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root / "minari"))
    monkeypatch.setenv("D4RL_DATASET_DIR", str(root / "d4rl"))
    monkeypatch.delenv("FLOWRL_D4RL_BASE_URL", raising=False)
    return root


def make_arrays(lengths=(5, 3, 7, 1, 4), obs_dim=3, act_dim=2, seed=0, trailing=False, with_next=True):
    """Tiny D4RL-style arrays: one episode per entry of ``lengths``, ending alternately in a terminal and
    a timeout; with ``trailing`` the last episode has no flag. Observations are continuous across an
    episode (next_observations[i] == observations[i+1] inside episodes)."""
    rng = np.random.default_rng(seed)
    obs, nxt, term, tout = [], [], [], []
    for e, n in enumerate(lengths):
        states = rng.normal(size=(n + 1, obs_dim)).astype(np.float32)
        obs.append(states[:-1])
        nxt.append(states[1:])
        t = np.zeros(n, bool)
        o = np.zeros(n, bool)
        last = trailing and e == len(lengths) - 1
        if not last:
            (t if e % 2 == 0 else o)[-1] = True
        term.append(t)
        tout.append(o)
    n = sum(lengths)
    out = {
        "observations": np.concatenate(obs),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.concatenate(term),
        "timeouts": np.concatenate(tout),
    }
    if with_next:
        out["next_observations"] = np.concatenate(nxt)
    return out


@pytest.fixture
def make_data():
    """The :func:`make_arrays` factory."""
    return make_arrays
