"""The checks people run before they push, run by the suite: ruff's lint and format check, and mypy.

Tool versions are pinned in the ``test`` extra (setup.cfg) and in .pre-commit-config.yaml, so the three agree.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What mypy checks, as installed import paths: the whole package, i.e. the backbone (flowrl/, flowrl.ops included)
# and the subpackages setup.cfg installs into it from envs/, agents/ and scripts/. Third-party imports are read
# for types only.
MYPY_SCOPE = ("flowrl",)
INSTALLED = {"envs": "envs", "agents": "agents", "scripts": "scripts"}  # package_dir in setup.cfg


def _run(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_ruff_check():
    pytest.importorskip("ruff", reason="ruff is not installed (the test extra: pip install -e '.[test]')")
    res = _run("ruff", "check", "--no-cache", ".")
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]


def test_ruff_format_check():
    pytest.importorskip("ruff", reason="ruff is not installed (the test extra: pip install -e '.[test]')")
    res = _run("ruff", "format", "--check", "--no-cache", ".")
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]


def _installed_layout(root: Path) -> Path:
    """``root/flowrl`` laid out as installed (the helper the docs build uses for its API reference)."""
    spec = importlib.util.spec_from_file_location("flowrl_docs_hooks", REPO / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks.installed_layout(root)


def test_mypy(tmp_path):
    pytest.importorskip("mypy", reason="mypy is not installed (the test extra: pip install -e '.[test]')")
    root = _installed_layout(tmp_path / "src")
    files = []
    for part in MYPY_SCOPE:
        base = root / part
        if base.is_file():
            files.append(base)
            continue
        for folder, dirs, names in os.walk(base, followlinks=True):  # the subpackages are links in the layout
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            files += [Path(folder) / n for n in names if n.endswith(".py")]
    walked = {f.relative_to(root).parts[1] for f in files}  # flowrl/<entry>/...
    missing = sorted({*INSTALLED, "ops"} - walked)
    assert not missing, f"the file list misses the subpackages {missing}"
    env_config = ["--config-file", str(REPO / "pyproject.toml"), "--cache-dir", str(tmp_path / "cache")]
    res = _run("mypy", *env_config, *sorted(str(f.relative_to(root)) for f in files), cwd=root)
    assert res.returncode == 0, res.stdout[-8000:] + res.stderr[-2000:]
    assert os.path.isdir(tmp_path / "cache")  # it ran
