"""Peer libraries that the ``flowrl bench`` commands compare against.

A peer never becomes a dependency of flowrl: each lives in a virtual environment of its own (created on
first use) and talks to flowrl through a standalone runner script that writes JSON.

- :mod:`flowrl.scripts.peers.d3rlpy_venv` creates or locates d3rlpy's virtual environment.
- ``d3rlpy_runner.py`` is the script that environment's python runs (it never imports flowrl).
- :mod:`flowrl.scripts.peers.run` runs it from flowrl and returns the parsed JSON.
"""

from __future__ import annotations

import importlib

# Exports load on first use, so that ``python -m flowrl.scripts.peers.d3rlpy_venv`` runs its module only once.
_EXPORTS = {
    "PeerEnvError": "d3rlpy_venv",
    "d3rlpy_venv_dir": "d3rlpy_venv",
    "ensure_d3rlpy_venv": "d3rlpy_venv",
    "PeerRunError": "run",
    "build_runner_command": "run",
    "read_result": "run",
    "run_d3rlpy": "run",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
