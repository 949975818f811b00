"""Trainer checkpoints on disk: writing a step folder atomically, pointing ``latest`` at it, pruning the
oldest, and reading one back.

A run's ``checkpoints/`` folder holds::

    step_NNNNNNNN/   model.pt, agent.json (a loadable agent, see :meth:`flowrl.agents.Agent.write_into`)
                     + trainer.pt (optimizer, scheduler, RNG states, step, history)
    latest           the name of the newest complete step folder

A step folder is written to a temporary sibling and renamed, and ``latest`` is replaced atomically after
it, so a run killed at any moment leaves the previous checkpoint as the newest. :class:`flowrl.agents.Trainer`
writes one folder per checkpoint; the seed-batched trainer writes every seed's folder before moving any
seed's ``latest``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from flowrl.agents.agent import CHECKPOINT_NAME, MODEL_FILE, Agent, torch_save

from flowrl import atomic
from flowrl.errors import InputError, MissingInputError

__all__ = [
    "TRAINER_FILE",
    "load_checkpoint",
    "point_latest",
    "prune_checkpoints",
    "read_latest",
    "step_name",
    "write_checkpoint",
    "write_step",
]

TRAINER_FILE = "trainer.pt"


def step_name(step: int) -> str:
    """The folder name of the checkpoint of update ``step`` (``step_NNNNNNNN``)."""
    return f"step_{step:08d}"


def write_step(root: Path, name: str, agent: Agent, trainer_state: Callable[[], dict[str, Any]]) -> Path:
    """Write ``root/name`` atomically: the agent's files and ``trainer.pt`` holding ``trainer_state()``."""
    with atomic.atomic_dir(root / name) as tmp:
        agent.write_into(tmp)
        torch_save(trainer_state(), tmp / TRAINER_FILE)
    return root / name


def point_latest(root: Path, name: str) -> None:
    """Make ``root/latest`` name the step folder ``name`` (atomically)."""
    atomic.write_text(root / "latest", name + "\n")


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest step folders of ``root``."""
    for p in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(p, ignore_errors=True)


def write_checkpoint(
    root: Path, step: int, agent: Agent, trainer_state: Callable[[], dict[str, Any]], keep: int
) -> Path:
    """Checkpoint update ``step`` in ``root`` (unless it is there already), point ``latest`` at it and keep
    the ``keep`` newest; returns the step folder."""
    root.mkdir(exist_ok=True)
    name = step_name(step)
    if (root / name).exists():
        return root / name
    final = write_step(root, name, agent, trainer_state)
    point_latest(root, name)
    prune_checkpoints(root, keep)
    return final


def load_checkpoint(folder: Path, *, state_location: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(model weights on the CPU, trainer state on ``state_location``) of the step folder ``folder``; a
    missing file is a MissingInputError, an unreadable one or one without a dict an InputError naming the
    folder."""
    try:
        weights = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
        state = torch.load(folder / TRAINER_FILE, map_location=state_location, weights_only=True)
    except FileNotFoundError as e:
        raise MissingInputError(f"checkpoint {folder} is incomplete: {e.filename} is missing") from None
    except Exception as e:
        raise InputError(f"checkpoint {folder} is corrupt or truncated ({type(e).__name__}: {e})") from None
    if not isinstance(weights, dict) or not isinstance(state, dict):
        raise InputError(f"checkpoint {folder} does not hold a flowrl state dict")
    return weights, state


def read_latest(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model weights, trainer state) of the step folder ``root/latest`` names, on the CPU; the run folder
    is ``root.parent``."""
    latest = root / "latest"
    if not latest.is_file():
        raise MissingInputError(
            f"nothing to resume in {root.parent}: no checkpoint yet (the run stopped before its first "
            "one); start it again with --overwrite"
        )
    name = latest.read_text(errors="replace").strip()
    if not CHECKPOINT_NAME.fullmatch(name):
        raise InputError(f"{latest} names {name!r}, not a checkpoint folder step_NNNNNNNN")
    return load_checkpoint(root / name)
