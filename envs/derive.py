"""Partially observed datasets: every observation cut down to some of its dimensions.

The POMDP versions of MuJoCo locomotion (Han et al. 2020; Ni et al. 2022) keep only the velocities (``-v``:
the positions must be integrated from memory) or only the positions (``-p``) of each observation.
:func:`derive_dataset` makes such a dataset from any other, and :func:`write_derived` writes it as a
D4RL-layout file that records the kept dimensions in its ``observation_indices`` attribute (with
``observation_size``, the full observation's length). flowrl loads the file as any other; an agent trained on
it stores the map in its checkpoint, and every rollout applies the same selection to the live environment
(:func:`flowrl.envs.observations.wrap_env`).

Position/velocity split of gymnasium's v5 observations (:data:`POSITION_VELOCITY`): ``qpos`` without the root's
x (and y for ant) first, then ``qvel``; ant's contact forces after them (kept by neither).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from flowrl.errors import InputError, MissingInputError, OutputExistsError

from .dataset import TrajectoryDataset
from .observations import ObservationMap

__all__ = ["POSITION_VELOCITY", "keep_indices", "derive_dataset", "write_derived"]

POSITION_VELOCITY: dict[str, tuple[tuple[int, ...], range, range]] = {
    # env: (full observation sizes, position dims, velocity dims)
    "hopper": ((11,), range(0, 5), range(5, 11)),
    "halfcheetah": ((17,), range(0, 8), range(8, 17)),
    "walker2d": ((17,), range(0, 8), range(8, 17)),
    # v5 with contact forces (105), without (27), and D4RL's v2 files (111: the older contact forces)
    "ant": ((105, 27, 111), range(0, 13), range(13, 27)),
}
KEEP_NAMES = ("velocities", "positions")


def keep_indices(keep: str, ds: TrajectoryDataset) -> tuple[int, ...]:
    """The dimensions of ``ds``'s observation rows that ``keep`` names: "velocities", "positions" (MuJoCo
    locomotion, see :data:`POSITION_VELOCITY`) or explicit indices "I,J,K" (0-based, in that order)."""
    where = ds.metadata.get("source") or "the dataset"
    if keep in KEEP_NAMES:
        task = _task(ds)
        if task not in POSITION_VELOCITY:
            raise InputError(
                f"--keep {keep}: the position/velocity split of {where}'s environment ({ds.env_name or 'unknown'}) "
                f"is unknown (known: {', '.join(POSITION_VELOCITY)}); pass the dimensions to keep as I,J,K"
            )
        sizes, pos, vel = POSITION_VELOCITY[task]
        obs_map = ds.observation_map
        if obs_map is not None and obs_map.indices is not None:
            raise InputError(
                f"--keep {keep}: {where} already keeps a subset of the observation ({obs_map.describe()}); "
                "derive from the full-observation dataset, or pass the dimensions to keep as I,J,K"
            )
        if ds.obs_dim not in sizes:
            raise InputError(
                f"--keep {keep}: {where} has observations of size {ds.obs_dim}, but {task}'s position/velocity "
                f"split is known for size {' or '.join(map(str, sizes))}; pass the dimensions to keep as I,J,K"
            )
        return tuple(pos if keep == "positions" else vel)
    try:
        idx = tuple(int(p) for p in keep.split(","))
    except ValueError:
        raise InputError(
            f"--keep {keep!r}: use velocities, positions or comma-separated dimensions such as 0,3,4"
        ) from None
    bad = [i for i in idx if not 0 <= i < ds.obs_dim]
    if bad:
        raise InputError(
            f"--keep: dimension {bad[0]} is out of range for {where}'s observations of size {ds.obs_dim} "
            f"(use 0..{ds.obs_dim - 1})"
        )
    dup = next((i for n, i in enumerate(idx) if i in idx[:n]), None)
    if dup is not None:
        raise InputError(f"--keep: dimension {dup} is listed twice")
    return idx


def derive_dataset(ds: TrajectoryDataset, indices: tuple[int, ...]) -> TrajectoryDataset:
    """``ds`` with only the observation dimensions ``indices`` (of its rows, in that order) and an
    observation map from the environment's observation to the new rows: the indices composed with any
    selection ``ds`` already records, its dict flattening kept."""
    idx = np.asarray(indices, dtype=np.int64)
    old = ds.observation_map
    full = ds.obs_dim if old is None or old.indices is None else old.size
    kept = tuple(int(i) for i in (idx if old is None or old.indices is None else np.asarray(old.indices)[idx]))
    if old is not None and old.keys is not None:
        new_map = ObservationMap(keys=old.keys, key_sizes=old.key_sizes, indices=kept, size=old.size)
    else:
        new_map = ObservationMap(indices=kept, size=full)
    meta: dict[str, Any] = {k: v for k, v in ds.metadata.items() if k not in ("source", "format")}
    meta.update(new_map.to_metadata())
    arrays = ds.arrays()
    nxt = arrays.get("next_observations")
    return TrajectoryDataset.from_arrays(
        np.ascontiguousarray(ds.observations[:, idx]),
        ds.actions,
        ds.rewards,
        ds.terminals,
        ds.timeouts,
        meta,
        next_observations=None if nxt is None else np.ascontiguousarray(nxt[:, idx]),
    )


def write_derived(
    src: str | os.PathLike, out: str | os.PathLike, keep: str, *, overwrite: bool = False
) -> tuple[Path, TrajectoryDataset]:
    """Load ``src`` (any dataset string :func:`flowrl.envs.load_dataset` accepts), keep the dimensions ``keep``
    names (:func:`keep_indices`) and write the result to ``out`` (``.hdf5``/``.h5``: D4RL layout, ``.npz``)
    atomically. The output path is checked before anything is loaded; nothing is written on an error."""
    from .io_d4rl import write_d4rl_hdf5, write_npz
    from .loaders import load_dataset

    out = Path(out)
    if out.suffix not in (".hdf5", ".h5", ".npz"):
        raise InputError(f"{out}: the derived dataset is written as .hdf5 (D4RL layout) or .npz; name it so")
    if out.is_dir():
        raise InputError(f"{out} is a directory; name the file to write")
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it")
    if not out.parent.is_dir():
        raise MissingInputError(f"folder {out.parent} does not exist; create it first")
    ds = load_dataset(str(src))
    derived = derive_dataset(ds, keep_indices(keep, ds))
    meta = {"derived_from": str(ds.metadata.get("source") or src), "derived_keep": keep}
    write = write_npz if out.suffix == ".npz" else write_d4rl_hdf5
    write(out, derived, metadata=meta, overwrite=overwrite)
    return out, derived


def _task(ds: TrajectoryDataset) -> str | None:
    from .specs import get_spec

    if not ds.env_name:
        return None
    try:
        return get_spec(ds.env_name).name
    except InputError:
        return None
