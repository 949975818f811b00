"""A cache that native code may be loaded from: private directories and files checked against a recorded hash.

Loading a shared library runs its constructors with the rights of the process, so a library is loaded only when
nobody but the current user (or root) could have put it there, and only when its bytes are the ones recorded
when flowrl built it:

- The cache root is ``$FLOWRL_CACHE`` (default ``~/.cache/flowrl``) and must be an absolute path: a relative one
  would be resolved against whatever the working directory is, so it is refused, never resolved.
- The cache root and every directory flowrl creates below it (mode 0700) must be owned by the current user and
  writable by nobody else; every directory above the root must be owned by the user or root and writable by
  nobody else, unless its sticky bit keeps others from renaming what they do not own (``/tmp``). Symbolic links
  on the way must belong to the user or root. This is the rule ``ssh`` applies to ``authorized_keys``.
- Each built file gets ``<name>.sha256`` beside it. :func:`open_verified` opens the file once (no symlinks),
  checks owner and mode, hashes the bytes it read and returns the open descriptor, so the caller loads through
  ``/proc/self/fd/N`` exactly the inode that was hashed. A truncated, foreign or unrecorded file fails the
  check and the caller rebuilds it; nothing unverified is mapped (a truncated library mapped into memory kills
  the process with SIGBUS on first touch).

A check that fails raises :class:`UntrustedCacheError` naming the path and the fix.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["UntrustedCacheError", "cache_root", "private_dir", "open_verified", "record_hash", "hash_path"]


class UntrustedCacheError(RuntimeError):
    """A cache path that others could write to, or a cached file that is not the one recorded."""


def cache_root() -> Path:
    """``$FLOWRL_CACHE`` or ``~/.cache/flowrl``; an absolute path or :class:`UntrustedCacheError`."""
    raw = os.environ.get("FLOWRL_CACHE")
    root = Path(raw) if raw else Path.home() / ".cache" / "flowrl"
    if not root.is_absolute():
        what = (
            f"FLOWRL_CACHE must be an absolute path, got {raw!r}" if raw else f"the home directory {root} is relative"
        )
        raise UntrustedCacheError(f"{what} (a relative cache would depend on the working directory)")
    return Path(os.path.normpath(root))


def _describe(st: os.stat_result) -> str:
    return f"owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}"


def _check_ancestor(path: Path, st: os.stat_result, uid: int) -> None:
    if st.st_uid not in (0, uid):
        raise UntrustedCacheError(f"{path} is {_describe(st)}: another user controls the cache's location")
    if stat.S_ISDIR(st.st_mode) and st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UntrustedCacheError(
            f"{path} is writable by others ({_describe(st)}): they could replace the cache; chmod go-w {path}"
        )


def _check_private(path: Path, st: os.stat_result, uid: int) -> None:
    if st.st_uid != uid:
        raise UntrustedCacheError(f"{path} is {_describe(st)}, not the current user's (uid {uid}); remove it")
    if st.st_mode & 0o022:
        raise UntrustedCacheError(
            f"{path} is writable by others ({_describe(st)}): anything in it may have been planted; "
            f"chmod go-w {path} and remove what you did not build there"
        )


def _check_chain(path: Path, root: Path, uid: int) -> None:
    """lstat every prefix of ``path``: symlinks and ancestors of ``root`` by the ancestor rule, the rest private."""
    prefix = Path(path.anchor)
    for part in path.parts[1:]:
        prefix = prefix / part
        st = os.lstat(prefix)
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in (0, uid):
                raise UntrustedCacheError(f"{prefix} is a symbolic link {_describe(st)}: another user controls it")
            continue  # its target is checked on the resolved path
        if prefix == root or root in prefix.parents:
            _check_private(prefix, st, uid)
        else:
            _check_ancestor(prefix, st, uid)


def private_dir(path: Path, root: Path) -> Path:
    """Create ``path`` (inside ``root``) with mode 0700 where missing, then check it and the way to it.

    Returns ``path``. Raises :class:`UntrustedCacheError` when others could write to it or to a directory
    above it (see the module docstring), OSError when it cannot be created.
    """
    if path != root and root not in path.parents:
        raise ValueError(f"{path} is not inside {root}")
    prefix = Path(path.anchor)
    for part in path.parts[1:]:  # missing directories are created private, the ancestors of root included
        prefix = prefix / part
        try:
            os.mkdir(prefix, 0o700)
        except FileExistsError:
            pass
    uid = os.geteuid()
    _check_chain(path, root, uid)
    real = Path(os.path.realpath(path))
    if real != path:  # symlinks on the way: the directories they lead to must pass as well
        _check_chain(real, Path(os.path.realpath(root)), uid)
    return path


def hash_path(path: Path) -> Path:
    """Where the hash of ``path`` is recorded: ``<name>.sha256`` beside it."""
    return path.with_name(path.name + ".sha256")


def record_hash(path: Path, data: bytes) -> None:
    """Write ``sha256(data)`` to :func:`hash_path` (temp file, then rename: never a half-written record)."""
    target = hash_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(hashlib.sha256(data).hexdigest() + "\n")
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def open_verified(path: Path) -> int:
    """Open ``path`` read-only and return the descriptor if its bytes match the recorded hash.

    The file must be a regular file (not a symlink) owned by the current user and writable by nobody else.
    Raises :class:`UntrustedCacheError` (missing or different hash, wrong owner or mode) or FileNotFoundError.
    The caller closes the descriptor.
    """
    try:
        recorded = hash_path(path).read_text().strip()
    except FileNotFoundError:
        if not path.exists():
            raise
        raise UntrustedCacheError(f"{path} has no recorded hash ({hash_path(path).name}); not built here") from None
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UntrustedCacheError(f"{path} is not a regular file")
        _check_private(path, st, os.geteuid())
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        if digest.hexdigest() != recorded:
            raise UntrustedCacheError(f"{path} does not match its recorded hash (truncated, damaged or replaced)")
        return fd
    except BaseException:
        os.close(fd)
        raise
