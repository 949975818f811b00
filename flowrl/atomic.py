"""Atomic writes: a file or a whole folder appears complete under its name, or not at all.

Everything is written to a hidden temporary sibling (``.NAME.tmp-PID-XXXXXXXX``, same folder, so the
rename stays on one file system), flushed to disk, and renamed over ``NAME``. A crash or a kill at any
moment leaves either the old content or the new one, plus at worst a hidden temporary that
:func:`remove_stale_temps` recognises by name (it carries the writer's process id).

Files and folders get the modes the user's umask gives (``0666``/``0777`` minus the umask), like any
file the user's programs create; Python's ``mkstemp``/``mkdtemp`` would make them ``0600``/``0700``.

Examples::

    write_text("runs/a/config.json", text)
    write_json("runs/a/results.json", {"score": 61.2})      # refuses NaN: JSON has no NaN
    with atomic_path("runs/a/curve.png") as tmp:             # for writers that want a path
        fig.savefig(tmp, format="png")
    with atomic_dir("runs/a/checkpoints/step_00001000") as tmp:
        torch.save(state, tmp / "model.pt")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_path",
    "is_temp_name",
    "remove_stale_temps",
    "write_bytes",
    "write_json",
    "write_text",
]

# .NAME.tmp-PID-RANDOM[SUFFIX] (a write in progress) or .NAME.old-PID-RANDOM (a folder being replaced)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}(?P<suffix>\.[A-Za-z0-9]+)?$")


def _temp_name(path: Path, kind: str = "tmp", suffix: str = "") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def _new_temp_file(path: Path, suffix: str = "") -> Path:
    """Create an empty temporary sibling of ``path`` (mode 0666 minus the umask), never following a link."""
    for _ in range(100):
        tmp = _temp_name(path, suffix=suffix)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file next to {path}")


def _new_temp_dir(path: Path) -> Path:
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            os.mkdir(tmp, 0o777)
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(f"cannot create a temporary folder next to {path}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Persist a folder's entries (a rename into it); some file systems cannot, which is harmless."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "", fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling path to write ``path``'s content to; renamed over ``path`` if the block
    succeeds, removed if it raises. ``suffix`` ends the temporary name (for writers that look at the
    extension: ``np.savez`` appends ``.npz`` to a name without it)."""
    path = Path(path)
    tmp = _new_temp_file(path, suffix)
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns ``path``."""
    return write_bytes(path, text.encode("utf-8"), fsync=fsync)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2, sort_keys: bool = False, **kw) -> Path:
    """Write ``obj`` as JSON (plus a final newline) atomically. NaN and infinity raise ValueError: the
    file must parse with any JSON reader (map them to ``None`` first where they can occur)."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, allow_nan=False, **kw) + "\n"
    return write_text(path, text)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, replace: bool = False, fsync: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; renamed to ``path`` if the block succeeds, removed if it
    raises. An existing ``path`` is swapped out only once the new folder is complete (``replace=True``;
    otherwise it is an error). The swap is two renames: a crash between them leaves the old folder under
    a hidden ``.NAME.old-PID-...`` name, which :func:`remove_stale_temps` clears."""
    path = Path(path)
    tmp = _new_temp_dir(path)
    try:
        yield tmp
        if fsync:
            for f in tmp.rglob("*"):
                if f.is_file() and not f.is_symlink():
                    _fsync_file(f)
            _fsync_dir(tmp)
        if os.path.lexists(path):
            if not replace:
                raise FileExistsError(f"{path} already exists")
            old = _temp_name(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if fsync:
        _fsync_dir(path.parent)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary this module creates (a write in progress or a folder being replaced)."""
    return _TEMP.match(name) is not None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, *, all_but_mine: bool = False) -> list[Path]:
    """Remove the temporaries in ``folder`` whose writer is gone; returns what was removed.

    A temporary whose process still runs is kept (it may be writing now), unless ``all_but_mine``: the
    caller holds the folder's lock, so no other process can be writing there.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if m is None:
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or (not all_but_mine and _alive(pid)):
            continue
        _remove(entry)
        removed.append(entry)
    return removed
