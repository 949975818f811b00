"""Project-wide test settings: never touch the network or the user's dataset folders."""

from __future__ import annotations

import os
import tempfile

import pytest

# Set before any test module imports minari/huggingface: every test runs offline, against private folders.
_ROOT = tempfile.mkdtemp(prefix="flowrl-tests-")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("MINARI_DATASETS_PATH", os.path.join(_ROOT, "minari"))
os.environ.setdefault("D4RL_DATASET_DIR", os.path.join(_ROOT, "d4rl"))
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("FLOWRL_CACHE", os.path.join(_ROOT, "cache"))  # native kernels are built here once per run


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu skip, by name, where CUDA is not available."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run with -m gpu on a machine with one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["native", "torch"])
def kernel(request, monkeypatch):
    """Run a test once with flowrl's native kernels and once without (FLOWRL_NATIVE=0); skip the native run
    where they cannot be built here."""
    if request.param == "torch":
        monkeypatch.setenv("FLOWRL_NATIVE", "0")
    else:
        from flowrl.ops import native

        if not native.available():
            pytest.skip(f"native kernels {native.status()}")
    return request.param
