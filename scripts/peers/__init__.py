"""Peer libraries that the ``flowrl bench`` commands compare against.

A peer never becomes a dependency of flowrl: each lives in a virtual environment of its own (created on
first use) and talks to flowrl through a standalone runner script that writes JSON.

- :mod:`flowrl.scripts.peers.d3rlpy_venv` creates or locates d3rlpy's virtual environment.
- ``d3rlpy_runner.py`` is the script that environment's python runs (it never imports flowrl).
- :mod:`flowrl.scripts.peers.run` runs it from flowrl and returns the parsed JSON.
"""

from flowrl.scripts.peers.d3rlpy_venv import PeerEnvError, d3rlpy_venv_dir, ensure_d3rlpy_venv
from flowrl.scripts.peers.run import PeerRunError, build_runner_command, read_result, run_d3rlpy

__all__ = [
    "PeerEnvError",
    "PeerRunError",
    "build_runner_command",
    "d3rlpy_venv_dir",
    "ensure_d3rlpy_venv",
    "read_result",
    "run_d3rlpy",
]
