"""Create or locate the virtual environment that holds d3rlpy, the peer the bench commands compare against.

d3rlpy 2.8.1 pins ``gymnasium==1.0.0`` while flowrl uses gymnasium 1.4 with mujoco 4, so d3rlpy lives in
a virtual environment of its own and never becomes a dependency of flowrl. The environment is made on
first use (a few minutes: torch is the large part) under

    $FLOWRL_PEERS_DIR/d3rlpy-2.8.1        if FLOWRL_PEERS_DIR is set
    ~/.cache/flowrl/peers/d3rlpy-2.8.1    otherwise

with ``python -m venv``, then ``pip install torch==2.13.0`` (pinned so pip takes the CPU wheel instead of
a multi-GB CUDA build), then d3rlpy, gymnasium 1.0, a mujoco that gymnasium 1.0's MuJoCo v5
environments run on, and h5py, all under a constraints file that keeps torch at 2.13.0. A marker file
written after a successful smoke test (``gymnasium.make("Hopper-v5")`` steps) says the environment is
complete; an environment without it is finished by rerunning the installs, which pip makes idempotent.

Create it ahead of time (or check where it is) with::

    python -m flowrl.scripts.peers.d3rlpy_venv
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

__all__ = [
    "D3RLPY_VERSION",
    "REQUIREMENTS",
    "TORCH_VERSION",
    "PeerEnvError",
    "create_d3rlpy_venv",
    "d3rlpy_venv_dir",
    "ensure_d3rlpy_venv",
    "is_ready",
    "venv_python",
]

D3RLPY_VERSION = "2.8.1"
TORCH_VERSION = "2.13.0"
# gymnasium 1.0's mujoco extra asks only for mujoco>=2.1.5; pin the 3.2 series gymnasium 1.0 was released
# against (checked: Hopper-v5 steps with it) rather than mujoco 4, whose split into mujoco/mujoco-core
# packages came long after gymnasium 1.0.
MUJOCO_VERSION = "3.2.7"
REQUIREMENTS = (f"d3rlpy=={D3RLPY_VERSION}", "gymnasium[mujoco]==1.0.0", f"mujoco=={MUJOCO_VERSION}", "h5py")
MARKER = "flowrl-peer.json"
INSTALL_LOG = "flowrl-peer-install.log"
ENV_VAR = "FLOWRL_PEERS_DIR"
SMOKE_TEST = (
    "import d3rlpy, gymnasium, numpy as np; e = gymnasium.make('Hopper-v5'); e.reset(seed=0); "
    "o = e.step(np.zeros(e.action_space.shape, dtype=np.float32))[0]; assert o.shape == (11,), o.shape; "
    "print('d3rlpy', d3rlpy.__version__, 'gymnasium', gymnasium.__version__)"
)

Log = Callable[[str], None]


class PeerEnvError(RuntimeError):
    """The peer's virtual environment is missing and may not be created, or creating it failed."""


def _stderr(msg: str) -> None:
    print(f"flowrl peers: {msg}", file=sys.stderr, flush=True)


def d3rlpy_venv_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where d3rlpy's environment lives: ``$FLOWRL_PEERS_DIR/d3rlpy-<v>`` or ``~/.cache/flowrl/peers/...``."""
    env = os.environ if environ is None else environ
    root = env.get(ENV_VAR) or str(Path("~/.cache/flowrl/peers").expanduser())
    return Path(root).expanduser().absolute() / f"d3rlpy-{D3RLPY_VERSION}"


def venv_python(venv: Path) -> Path:
    """The interpreter of the virtual environment ``venv`` (POSIX and Windows layouts)."""
    venv = Path(venv)
    win = venv / "Scripts" / "python.exe"
    return win if os.name == "nt" else venv / "bin" / "python"


def _wanted_marker() -> dict:
    return {"torch": TORCH_VERSION, "requirements": list(REQUIREMENTS)}


def is_ready(venv: Path) -> bool:
    """True when ``venv`` has an interpreter and a marker saying the current pins were installed and tested."""
    venv = Path(venv)
    if not venv_python(venv).exists():
        return False
    try:
        marker = json.loads((venv / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and {k: marker.get(k) for k in ("torch", "requirements")} == _wanted_marker()


def ensure_d3rlpy_venv(venv: Path | str | None = None, *, create: bool = True, log: Log = _stderr) -> Path:
    """Return the python of d3rlpy's environment, creating the environment first if it is not complete.

    With ``create=False`` a missing or incomplete environment raises :class:`PeerEnvError` saying how to
    make it, instead of installing anything.
    """
    venv = d3rlpy_venv_dir() if venv is None else Path(venv).expanduser().absolute()
    if is_ready(venv):
        return venv_python(venv)
    if not create:
        raise PeerEnvError(
            f"d3rlpy {D3RLPY_VERSION} environment not found (or incomplete) at {venv}; create it with "
            f"`python -m flowrl.scripts.peers.d3rlpy_venv` or point {ENV_VAR} at the folder that holds it"
        )
    with _lock(venv):
        if is_ready(venv):  # made by another process while we waited for the lock
            return venv_python(venv)
        return create_d3rlpy_venv(venv, log=log)


def create_d3rlpy_venv(venv: Path, *, base_python: str = sys.executable, log: Log = _stderr) -> Path:
    """Create (or finish) d3rlpy's environment at ``venv`` and smoke-test it; return its python."""
    venv = Path(venv)
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        raise PeerEnvError(f"{venv} exists and is not a virtual environment; remove it or set {ENV_VAR}")
    venv.mkdir(parents=True, exist_ok=True)
    log_path = venv / INSTALL_LOG
    log(f"setting up d3rlpy {D3RLPY_VERSION} in {venv} (first use; a few minutes; log: {log_path})")
    py = str(venv_python(venv))
    with tempfile.TemporaryDirectory() as tmp:
        constraints = Path(tmp) / "constraints.txt"
        constraints.write_text(f"torch=={TORCH_VERSION}\n")
        steps = [
            ("creating the virtual environment", [base_python, "-m", "venv", str(venv)]),
            (f"installing torch=={TORCH_VERSION} (CPU)", [py, "-m", "pip", "install", f"torch=={TORCH_VERSION}"]),
            (
                f"installing {' '.join(REQUIREMENTS)}",
                [py, "-m", "pip", "install", *REQUIREMENTS, "-c", str(constraints)],
            ),
            ("checking that d3rlpy imports and Hopper-v5 steps", [py, "-c", SMOKE_TEST]),
        ]
        for i, (what, cmd) in enumerate(steps, 1):
            log(f"[{i}/{len(steps)}] {what}")
            _run_logged(cmd, log_path, what)
    (venv / MARKER).write_text(json.dumps(_wanted_marker(), indent=2) + "\n")
    log(f"d3rlpy environment ready: {py}")
    return Path(py)


def _run_logged(cmd: list[str], log_path: Path, what: str) -> None:
    with open(log_path, "a") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        except OSError as e:
            rc, tail = None, str(e)
    if rc == 0:
        return
    if rc is not None:
        lines = log_path.read_text(errors="replace").splitlines()
        tail = "\n".join(lines[-15:])
    raise PeerEnvError(
        f"creating the d3rlpy environment failed while {what} (exit {rc}): {' '.join(cmd)}\n{tail}\n"
        f"full log: {log_path}. Fix the cause (network to the package index? disk space?) and rerun; "
        f"the finished steps are reused."
    )


@contextlib.contextmanager
def _lock(venv: Path) -> Iterator[None]:
    """Serialise creation between processes (two benches started at once must not both pip install)."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock, creation is idempotent anyway
        yield
        return
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m flowrl.scripts.peers.d3rlpy_venv",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--path", default=None, help=f"environment folder (default: {d3rlpy_venv_dir()})")
    p.add_argument("--check", action="store_true", help="only report whether it is ready; never install")
    args = p.parse_args(argv)
    try:
        py = ensure_d3rlpy_venv(args.path, create=not args.check)
    except PeerEnvError as e:
        print(f"flowrl peers: error: {e}", file=sys.stderr)
        return 1
    print(py)
    return 0


if __name__ == "__main__":
    sys.exit(main())
