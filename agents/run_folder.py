"""A training run's folder: checked before anything is written, claimed by one process, cleaned on failure.

:func:`check_run_folder` says whether a run may use a folder, without touching it: a new run needs a
missing or empty folder; replacing (``overwrite``) is allowed only for a flowrl run folder (it has
``config.json`` or ``checkpoints/``) or an empty one; resuming needs a run folder. A symlink is followed
and the folder it points at is what these rules see and what gets written.

:func:`open_run_folder` then claims it for the duration of a run:

1. creates it (and missing parents), takes its lock (:func:`flowrl.lock.folder_lock`): a second
   process on the same folder gets a one-line error instead of mixing its files with this run's;
2. removes what killed runs left there: hidden temporaries of interrupted atomic writes
   (``.NAME.tmp-PID-...``, in the folder and in ``checkpoints/``);
3. with ``overwrite``, moves the previous run's files into one hidden folder and deletes it, only now
   that the new run has loaded its data and built its model;
4. writes ``config.json`` (a new run);
5. if the run then fails before writing its first checkpoint, removes what it created: the folder (and
   the parents it made) when it made it, else the files it wrote. A resumed run keeps everything.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flowrl import atomic
from flowrl.errors import InputError, MissingInputError, OutputExistsError
from flowrl.lock import folder_lock

__all__ = ["CONFIG_FILE", "LOCK_FILE", "check_run_folder", "is_run_folder", "open_run_folder"]

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
CHECKPOINTS = "checkpoints"
# Temporary checkpoint folders of earlier flowrl versions (tempfile.mkdtemp(prefix=".step_N."))
_LEGACY_TEMP = re.compile(r"^\.step_\d+\..+$")


def is_run_folder(path: Path) -> bool:
    """Whether ``path`` holds a flowrl training run (its ``config.json`` or ``checkpoints/``)."""
    return (path / CONFIG_FILE).is_file() or (path / CHECKPOINTS).is_dir()


def has_checkpoint(path: Path) -> bool:
    """Whether the run in ``path`` has written a checkpoint: its own, or one of its seeds' (``seed_<k>/``) in
    a seed-batched run."""
    return any((run / CHECKPOINTS / "latest").exists() for run in (path, *path.glob("seed_*")))


def _entries(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.name != LOCK_FILE]


def check_run_folder(out: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """Whether a run may use ``out``; returns the folder to write (a symlink resolved). Touches nothing.

    Raises:
        InputError: the reason, and what to pass instead.
    """
    given = Path(out)
    if resume and overwrite:
        raise InputError("--resume continues a run and --overwrite replaces it: pass one of them")
    path = given.resolve() if given.is_symlink() else given
    if given.is_symlink() and not path.exists():
        raise InputError(f"run folder {given} is a symlink to {path}, which does not exist")
    if path.exists() and not path.is_dir():
        raise InputError(f"run folder {given} exists and is not a folder")
    if resume:
        if not path.is_dir():
            raise MissingInputError(f"--resume: run folder {given} does not exist")
        if not is_run_folder(path):
            raise InputError(f"--resume: {given} is not a flowrl run folder (no {CONFIG_FILE})")
        return path
    if path.is_dir() and _entries(path):
        if not overwrite:
            raise OutputExistsError(
                f"run folder {given} already exists; use --resume to continue it or --overwrite to replace it"
            )
        if not is_run_folder(path):
            raise InputError(
                f"--overwrite: {given} is not a flowrl run folder (no {CONFIG_FILE} or {CHECKPOINTS}/) and is "
                "not empty; flowrl replaces only its own runs: choose another --out"
            )
    _check_writable(path, given)
    return path


def _check_writable(path: Path, given: Path) -> None:
    """The folder (or its nearest existing parent, where it will be made) must be a writable folder."""
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"cannot make run folder {given}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to run folder {given}: {probe} is not writable")


def _make(path: Path) -> list[Path]:
    """``mkdir -p``; returns the folders it created, deepest last."""
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for p in reversed(missing):
        try:
            p.mkdir()
        except FileExistsError:
            pass
        except OSError as e:
            raise InputError(f"cannot make run folder {path}: {e.strerror}") from None
    return list(reversed(missing))


def remove_leftovers(path: Path) -> list[Path]:
    """Remove what killed runs left in run folder ``path`` (the caller holds its lock)."""
    removed = atomic.remove_stale_temps(path, all_but_mine=True)
    ckpt = path / CHECKPOINTS
    removed += atomic.remove_stale_temps(ckpt, all_but_mine=True)
    if ckpt.is_dir():
        for p in ckpt.iterdir():
            if _LEGACY_TEMP.match(p.name) and p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def _clear(path: Path) -> None:
    """Delete the previous run's files: first moved, one rename each, into one hidden folder (so a kill
    midway leaves a temporary that the next claim removes, never half a run looking whole)."""
    trash = atomic._new_temp_dir(path / "previous-run")
    for p in _entries(path):
        if p != trash:
            os.replace(p, trash / p.name)
    shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def open_run_folder(
    out: str | os.PathLike, *, resume: bool, overwrite: bool, record: dict[str, Any] | None = None
) -> Iterator[Path]:
    """Claim ``out`` for a run (see the module doc) and yield the folder to write.

    Args:
        resume: continue the run in ``out`` (kept as it is, also on failure).
        overwrite: replace the run in ``out``.
        record: written as ``config.json`` in a new run.
    """
    path = check_run_folder(out, resume=resume, overwrite=overwrite)
    created = _make(path)
    try:
        lock = folder_lock(path, name=LOCK_FILE, hint="wait for it to finish or choose another --out")
        with lock:
            remove_leftovers(path)
            if not resume:
                path = check_run_folder(out, resume=False, overwrite=overwrite)  # under the lock, again
                if _entries(path):
                    _clear(path)
                if record is not None:
                    atomic.write_json(path / CONFIG_FILE, record)
            try:
                yield path
            except BaseException:
                if not resume and not has_checkpoint(path):
                    for p in _entries(path):  # nothing of value yet: leave no half run behind
                        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink()
                raise
    except BaseException:
        for p in reversed(created):  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                p.rmdir()
        raise
