"""Run d3rlpy's Decision Transformer from flowrl: ``run_d3rlpy("train-speed", dataset=..., steps=300)``.

The runner script (``d3rlpy_runner.py`` beside this file) runs under the python of d3rlpy's own virtual
environment, in a subprocess with the same number of torch threads as this process, and writes its result
as JSON, which comes back here as a dict. Nothing of d3rlpy is imported into flowrl's process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowrl.scripts.peers.d3rlpy_venv import ensure_d3rlpy_venv

__all__ = ["NEGATABLE", "RUNNER", "SUBCOMMANDS", "PeerRunError", "build_runner_command", "read_result", "run_d3rlpy"]

RUNNER = Path(__file__).with_name("d3rlpy_runner.py")
SUBCOMMANDS = ("train-speed", "rollout-speed", "scores")
# Variables that would make the peer's python see flowrl's packages or another environment's.
# Runner flags that default to on: False must be spelled ``--no-<flag>`` instead of being left out.
NEGATABLE = frozenset({"full_length"})
_ENV_DROP = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")


class PeerRunError(RuntimeError):
    """The peer runner failed, timed out, or wrote no usable JSON; the message carries its output tail."""


def build_runner_command(
    python: str | os.PathLike, subcommand: str, json_path: str | os.PathLike, **kwargs: Any
) -> list[str]:
    """The argv that runs ``subcommand`` of the runner; keyword ``target_return=3600`` → ``--target-return 3600``.

    ``True`` becomes a bare flag, ``False`` and ``None`` are left out (``False`` becomes ``--no-<flag>`` for the
    flags in :data:`NEGATABLE`, which default to on), lists and tuples become several values.
    """
    if subcommand not in SUBCOMMANDS:
        raise ValueError(f"unknown d3rlpy runner subcommand {subcommand!r}; choose from {', '.join(SUBCOMMANDS)}")
    argv = [str(python), str(RUNNER), subcommand]
    for key, value in kwargs.items():
        if key == "json":
            raise ValueError("pass the output path as json_path, not as a keyword")
        flag = "--" + key.replace("_", "-")
        if value is False and key in NEGATABLE:
            argv.append("--no-" + key.replace("_", "-"))
            continue
        if value is None or value is False:
            continue
        if value is True:
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            if value:
                argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return [*argv, "--json", str(json_path)]


def read_result(path: str | os.PathLike, subcommand: str | None = None) -> dict:
    """Parse a runner's JSON file, checking that it is a d3rlpy result for ``subcommand``."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise PeerRunError(f"the d3rlpy runner wrote no result file {path}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise PeerRunError(f"the d3rlpy runner's result {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("peer") != "d3rlpy":
        raise PeerRunError(f'{path} does not hold a d3rlpy runner result (no "peer": "d3rlpy")')
    if subcommand is not None and data.get("subcommand") != subcommand:
        raise PeerRunError(f"{path} holds a {data.get('subcommand')!r} result, expected {subcommand!r}")
    return data


def run_d3rlpy(
    subcommand: str,
    *,
    python: str | os.PathLike | None = None,
    create: bool = True,
    threads: int | None = None,
    timeout: float | None = None,
    stream: bool = False,
    **kwargs: Any,
) -> dict:
    """Run the d3rlpy runner's ``subcommand`` with ``kwargs`` as its options and return its JSON result.

    python: the peer interpreter; default: d3rlpy's environment, created first when ``create`` (else
        :class:`~flowrl.scripts.peers.d3rlpy_venv.PeerEnvError` if it is missing).
    threads: torch CPU threads for the peer; default: this process's ``torch.get_num_threads()``, so both
        sides of a comparison get the same cores. Also sets OMP/MKL thread counts in its environment.
    timeout: seconds before the run is killed (:class:`PeerRunError`).
    stream: let the runner's stderr (d3rlpy's log lines) through instead of keeping it for error messages.
    """
    if subcommand not in SUBCOMMANDS:
        raise ValueError(f"unknown d3rlpy runner subcommand {subcommand!r}; choose from {', '.join(SUBCOMMANDS)}")
    if python is None:
        python = ensure_d3rlpy_venv(create=create)
    elif not Path(python).exists():
        raise PeerRunError(f"peer python {python} does not exist")
    threads = _default_threads() if threads is None else int(threads)
    with tempfile.TemporaryDirectory(prefix="flowrl-d3rlpy-") as tmp:
        out = Path(tmp) / "result.json"
        argv = build_runner_command(python, subcommand, out, threads=threads, **kwargs)
        # cwd=tmp: whatever d3rlpy writes next to itself (d3rlpy_logs/) goes away with the folder
        try:
            proc = subprocess.run(
                argv,
                cwd=tmp,
                env=peer_environ(threads),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=None if stream else subprocess.PIPE,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise PeerRunError(f"d3rlpy {subcommand} did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            tail = "\n".join(((proc.stderr or "") + (proc.stdout or "")).strip().splitlines()[-20:])
            raise PeerRunError(f"d3rlpy {subcommand} failed (exit {proc.returncode}): {' '.join(argv)}\n{tail}")
        return read_result(out, subcommand)


def peer_environ(threads: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the peer process: flowrl's python paths removed, thread counts pinned."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _ENV_DROP}
    if threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _default_threads() -> int:
    if "torch" in sys.modules or _torch_importable():
        import torch

        return int(torch.get_num_threads())
    return os.cpu_count() or 1


def _torch_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None
