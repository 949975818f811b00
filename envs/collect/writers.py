"""Writing recorded levels: Minari dataset ids, the atomic write and a disk-space check."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path
from typing import Any

__all__ = ["dataset_id", "write_level", "estimate_bytes", "check_free_space"]


def dataset_id(env: str, level: str) -> str:
    """Minari id of a flowrl-collected dataset: ``flowrl/<env>/<level>-v0`` (``flowrl/hopper/medium-v0``)."""
    from flowrl.envs.specs import get_spec

    name = re.sub(r"-v\d+$", "", get_spec(env).name).lower()
    return f"flowrl/{name}/{level}-v0"


def write_level(
    dataset: str, arrays: dict[str, Any], spec, metadata: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Write recorded arrays as the Minari dataset ``dataset`` (atomic; refuses an existing id)."""
    from flowrl.envs.minari_io import write_minari_dataset

    try:
        return write_minari_dataset(
            dataset,
            arrays["observations"],
            arrays["actions"],
            arrays["rewards"],
            arrays["terminals"],
            arrays["timeouts"],
            env_id=spec.gym_id,
            metadata=metadata,
            next_observations=arrays["next_observations"],
            overwrite=overwrite,
        )
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on device while writing {dataset!r}") from None
        raise


def estimate_bytes(transitions: int, obs_dim: int, act_dim: int) -> int:
    """Rough on-disk size of a written dataset, staging copy included (float32 arrays + flags, ×2)."""
    return int(2 * transitions * (4 * (obs_dim + act_dim + 1) + 2)) + (1 << 20)


def check_free_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """OSError(ENOSPC) with one clear line when the filesystem holding ``path`` has less than ``needed``."""
    p = Path(path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"not enough disk space for {what}: need about {needed / 2**20:.0f} MiB "
            f"at {p}, {free / 2**20:.0f} MiB free",
        )


def flowrl_version() -> str:
    try:
        from flowrl import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"
