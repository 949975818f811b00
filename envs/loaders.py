"""``load_dataset(spec)``: turn a path or a dataset name into a :class:`TrajectoryDataset`.

Resolution order (the first that applies wins):

1. an existing path: a Minari dataset directory, a D4RL-format ``.hdf5``/``.h5`` file, a ``.npz``;
2. a D4RL name (``hopper-medium-v2``): the D4RL cache (``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``),
   downloaded there first when ``download=True``;
3. a Minari id with a namespace (``mujoco/hopper/medium-v0``): the local Minari root
   (``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``), ``minari.download_dataset`` when
   ``download=True``;
4. a flowrl-collected name (``hopper-medium``): the local Minari id ``flowrl/hopper/medium-v0`` (highest
   local version); the built-in ``hopper-medium`` is generated from the shipped policy when it is missing
   (:func:`flowrl.envs.collect.ensure_default_dataset`).

Anything else raises ValueError listing what exists locally.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from flowrl.errors import InputError, MissingInputError

from .collect.default_dataset import DEFAULT_DATASETS, ensure_default_dataset
from .d4rl_suites import d4rl_name_of_file
from .dataset import TrajectoryDataset
from .io_d4rl import (
    _HDF5_SUFFIXES,
    d4rl_cache_dir,
    download_d4rl,
    find_cached_d4rl,
    parse_d4rl_name,
    read_d4rl_hdf5,
    read_npz,
)
from .minari_io import is_minari_dir, list_minari_ids, minari_root, read_minari_dir, resolve_minari_id

__all__ = ["load_dataset", "local_candidates", "FLOWRL_NAMESPACE"]

FLOWRL_NAMESPACE = "flowrl"
"""Minari namespace of datasets made by ``flowrl collect``: ``hopper-medium`` -> ``flowrl/hopper/medium-v0``."""
_FLOWRL_NAME = re.compile(r"(?P<env>[a-z0-9]+)-(?P<level>[a-z0-9]+(?:-[a-z0-9]+)*)")


def load_dataset(spec: str | os.PathLike, *, download: bool = False, base_url: str | None = None) -> TrajectoryDataset:
    """Load a dataset from a path, a D4RL name, a Minari id or a flowrl dataset name (see module doc).

    Args:
        spec: what to load.
        download: allow network downloads (D4RL names, Minari ids); off by default so nothing is
            fetched behind the user's back.
        base_url: D4RL mirror (else ``$FLOWRL_D4RL_BASE_URL``, else D4RL's own server).

    Raises:
        FileNotFoundError: ``spec`` looks like a file path (has a dataset suffix) that does not exist.
        ValueError: unknown name (the message lists local candidates), unreadable or invalid data (the
            message names the file and the problem), or a failed download.
    """
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"dataset must be a non-empty path or name, got {spec!r}")
    text = text.strip()
    path = Path(text).expanduser()

    # 1. an existing path
    if path.exists():
        return _load_path(path)
    if path.suffix.lower() in (*_HDF5_SUFFIXES, ".npz"):
        raise MissingInputError(f"dataset file {path} does not exist")

    # 2. a D4RL name
    d4rl = parse_d4rl_name(text) if "/" not in text else None
    if d4rl is not None:
        cached = find_cached_d4rl(text)
        if cached is not None:
            return read_d4rl_hdf5(cached, {"dataset_name": text})
        env, level, version = d4rl
        collected = resolve_minari_id(f"{FLOWRL_NAMESPACE}/{env}/{level}-v{version}")
        if collected is not None and not download:
            return read_minari_dir(collected, {"dataset_id": f"{FLOWRL_NAMESPACE}/{env}/{level}-v{version}"})
        if download:
            return read_d4rl_hdf5(download_d4rl(text, base_url=base_url), {"dataset_name": text})
        raise InputError(
            f"D4RL dataset {text!r} is not in the D4RL cache {d4rl_cache_dir()} (pass download=True / "
            f"--download to fetch it, or set D4RL_DATASET_DIR). {_candidates_text()}"
        )

    # 3. a Minari id
    if "/" in text:
        local = resolve_minari_id(text)
        if local is not None:
            return read_minari_dir(local, {"dataset_id": local.relative_to(minari_root()).as_posix()})
        if download:
            return _download_minari(text)
        raise InputError(
            f"Minari dataset {text!r} is not in the local Minari root {minari_root()} (pass download=True "
            f"to fetch it). {_candidates_text()}"
        )

    # 4. a flowrl-collected name
    m = _FLOWRL_NAME.fullmatch(text)
    if m is not None:
        dataset_id = f"{FLOWRL_NAMESPACE}/{m.group('env')}/{m.group('level')}"
        local = resolve_minari_id(dataset_id)
        if local is None and text in DEFAULT_DATASETS:  # built in: made here from the shipped policy, once
            local = resolve_minari_id(ensure_default_dataset(text))
        if local is not None:
            return read_minari_dir(local, {"dataset_id": local.relative_to(minari_root()).as_posix()})
        raise InputError(
            f"no local dataset {text!r} (looked for Minari id {dataset_id}-v* in {minari_root()}; "
            f"make it with `flowrl collect`). {_candidates_text()}"
        )
    raise InputError(f"unknown dataset {text!r}: not a path, D4RL name, Minari id or flowrl name. {_candidates_text()}")


def _load_path(path: Path) -> TrajectoryDataset:
    if path.is_dir():
        if is_minari_dir(path):
            return read_minari_dir(path)
        raise InputError(f"{path}: a directory but not a Minari dataset (no data/metadata.json inside)")
    suffix = path.suffix.lower()
    if suffix in _HDF5_SUFFIXES:
        return read_d4rl_hdf5(path)
    if suffix == ".npz":
        return read_npz(path)
    raise InputError(f"{path}: unsupported dataset file type {suffix or '(no suffix)'!r}; use .hdf5, .h5 or .npz")


def _download_minari(dataset_id: str) -> TrajectoryDataset:
    import minari

    try:
        minari.download_dataset(dataset_id)
    except Exception as e:  # network and hub errors come in many types; report them as bad input
        msg = " ".join(str(e).split())[:300]
        raise InputError(f"download of Minari dataset {dataset_id!r} failed: {msg}") from None
    local = resolve_minari_id(dataset_id)
    if local is None:
        raise InputError(f"Minari reported downloading {dataset_id!r} but it is not under {minari_root()}")
    return read_minari_dir(local, {"dataset_id": local.relative_to(minari_root()).as_posix()})


def local_candidates() -> dict[str, list[str]]:
    """What ``load_dataset`` can load without a network: Minari ids, flowrl names, D4RL cache names."""
    ids = list_minari_ids()
    flowrl = []
    for i in ids:
        parts = i.split("/")
        if len(parts) == 3 and parts[0] == FLOWRL_NAMESPACE:
            level = re.sub(r"-v\d+$", "", parts[2])
            flowrl.append(f"{parts[1]}-{level}")
    d4rl = []
    cache = d4rl_cache_dir()
    if cache.is_dir():
        for f in sorted(cache.iterdir()):
            if f.suffix in _HDF5_SUFFIXES and not f.name.startswith("."):
                d4rl.append(_d4rl_name_from_file(f.name))
    return {"flowrl": sorted(set(flowrl)), "minari": ids, "d4rl": d4rl}


def _d4rl_name_from_file(filename: str) -> str:
    suite = d4rl_name_of_file(filename)
    if suite is not None:
        return suite
    stem = filename.rsplit(".", 1)[0]
    m = re.fullmatch(r"([a-z0-9]+)_([a-z0-9_]+?)(-v\d+)?", stem)
    if m is None:
        return stem
    return f"{m.group(1)}-{m.group(2).replace('_', '-')}{m.group(3) or '-v0'}"


def _candidates_text() -> str:
    c = local_candidates()
    parts = [
        f"{label}: {', '.join(names)}"
        for label, names in (("flowrl datasets", c["flowrl"]), ("Minari ids", c["minari"]), ("D4RL cache", c["d4rl"]))
        if names
    ]
    where = f"(Minari root {minari_root()}, D4RL cache {d4rl_cache_dir()})"
    if not parts:
        return f"No local datasets found {where}."
    return f"Local datasets {where}: " + "; ".join(parts) + "."
