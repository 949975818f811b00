"""Exclusive use of a folder by one process: a lock file held with ``flock``.

Two processes writing one run folder would mix one run's files with the other's. :func:`folder_lock`
takes an exclusive, non-blocking ``flock`` on ``FOLDER/NAME`` and writes the holder's process id into
it; a second process gets :class:`FolderInUseError` (naming that process) at once. The kernel drops the
lock when its process dies, however it dies (``kill -9`` included), so a killed run never leaves a
stale lock behind: the next process simply takes it. The lock file is removed on release.

``flock`` works on local file systems; on network file systems that do not support it the lock
protects nothing (and fails with ``OSError`` where the call is refused).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from flowrl.errors import InputError

__all__ = ["FolderInUseError", "folder_lock"]


class FolderInUseError(InputError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, name: str = ".lock", hint: str = "") -> Iterator[Path]:
    """Hold the lock of ``folder`` (which must exist) for the duration of the block.

    Args:
        folder: the folder to claim.
        name: the lock file's name inside it.
        hint: appended to the error message (e.g. "wait for it or use another --out").

    Raises:
        FolderInUseError: another live process holds the lock.
    """
    path = Path(folder) / name
    fd = _acquire(path, Path(folder), hint)
    try:
        yield path
    finally:
        # Unlink while still holding the lock: a process that opened the old file before the unlink finds
        # (after its flock) that the name no longer points at its inode, and retries with a fresh file.
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _acquire(path: Path, folder: Path, hint: str) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUseError(
                f"{folder} is in use by another process (pid {holder})" + (f"; {hint}" if hint else "")
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:  # the holder released (and unlinked) it between our open and our flock
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
