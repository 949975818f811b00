"""D4RL-format files: HDF5 (``.hdf5``/``.h5``) and ``.npz`` with the D4RL keys, the D4RL cache folder and
the opt-in download of a D4RL dataset name.

Layout: top-level arrays ``observations`` [N, obs_dim], ``actions`` [N, act_dim], ``rewards`` [N],
``terminals`` [N], ``timeouts`` [N]; optional ``next_observations`` [N, obs_dim]; HDF5 files may also
hold ``infos/*`` and ``metadata/*`` groups (ignored) and file attributes (``env_id``,
``ref_min_score``, ``ref_max_score``, ... — kept as dataset metadata). All writers are atomic: the file
is written under a temporary name in the target folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flowrl import atomic
from flowrl.errors import InputError, MissingInputError, OutputExistsError

from .d4rl_suites import d4rl_name_of_file, d4rl_suite_file, to_suite_layout
from .dataset import REQUIRED_KEYS, TrajectoryDataset
from .observations import ObservationMap

__all__ = [
    "read_d4rl_hdf5",
    "read_npz",
    "write_d4rl_hdf5",
    "write_npz",
    "d4rl_cache_dir",
    "parse_d4rl_name",
    "d4rl_filename",
    "find_cached_d4rl",
    "download_d4rl",
    "D4RL_DEFAULT_BASE_URL",
]

D4RL_DEFAULT_BASE_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl"
"""D4RL's server; files live in ``gym_mujoco_v2/hopper_medium-v2.hdf5`` style paths below it."""
_D4RL_FOLDERS = {0: "gym_mujoco", 1: "gym_mujoco_v1", 2: "gym_mujoco_v2"}
_D4RL_NAME = re.compile(r"(?P<env>[a-z0-9]+)-(?P<level>[a-z0-9]+(?:-[a-z0-9]+)*)-v(?P<version>\d+)")
_HDF5_SUFFIXES = (".hdf5", ".h5")
# Rows read per block when picking episode-end rows out of next_observations: bounds the temporary.
_BLOCK_ROWS = 1 << 18

DatasetOrArrays = TrajectoryDataset | Mapping[str, Any]


# ---------------------------------------------------------------------- reading
def read_d4rl_hdf5(path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> TrajectoryDataset:
    """Load a D4RL-format HDF5 file.

    Raises:
        ValueError: not an HDF5 file / corrupt / truncated, missing keys, bad shapes or values; the
            message starts with the file path.
    """
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"{path}: not a readable HDF5 file ({_short(e)})") from None
    try:
        with f:
            missing = [k for k in REQUIRED_KEYS if k not in f]
            if missing:
                raise InputError(
                    f"{path}: missing required key(s) {', '.join(map(repr, missing))} "
                    f"(found: {', '.join(sorted(f.keys())) or 'nothing'}); a D4RL file needs "
                    f"{', '.join(REQUIRED_KEYS)}"
                )
            groups = [k for k in REQUIRED_KEYS if not isinstance(f[k], h5py.Dataset)]
            if groups:
                raise InputError(
                    f"{path}: {', '.join(map(repr, groups))} must be an array (an HDF5 dataset), but "
                    f"{'it is a group' if len(groups) == 1 else 'they are groups'}"
                )
            arrays = {k: f[k][()] for k in REQUIRED_KEYS}
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            meta = {**attrs, **dict(metadata or {}), "source": str(path), "format": "d4rl-hdf5"}
            # D4RL's maze, AntMaze, Adroit and Kitchen files: into gymnasium-robotics' layout
            name = meta.get("dataset_name") or d4rl_name_of_file(path.name)
            arrays, suite_meta = to_suite_layout(name, f, arrays, path)
            meta.update(suite_meta)
            ds = _build(arrays, meta, None, path)
            nxt = f.get("next_observations")
            if isinstance(nxt, h5py.Dataset) and not suite_meta:
                ds.final_observations = _final_from_next(nxt, ds, path)
    except (OSError, KeyError, RuntimeError) as e:
        # h5py raises these for truncated files and damaged chunks, often only when data is read.
        raise InputError(f"{path}: corrupt HDF5 file ({_short(e)})") from None
    return ds


def read_npz(path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> TrajectoryDataset:
    """Load an ``.npz`` with the D4RL keys (optional ``next_observations``; optional ``metadata_json``,
    a JSON string written by :func:`write_npz`)."""
    import zipfile

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED_KEYS if k not in z.files]
            if missing:
                raise InputError(
                    f"{path}: missing required key(s) {', '.join(map(repr, missing))} "
                    f"(found: {', '.join(sorted(z.files)) or 'nothing'}); a D4RL npz needs {', '.join(REQUIRED_KEYS)}"
                )
            arrays = {k: _npz_member(z, k, path) for k in REQUIRED_KEYS}
            nxt = _npz_member(z, "next_observations", path) if "next_observations" in z.files else None
            attrs = json.loads(str(_npz_member(z, "metadata_json", path))) if "metadata_json" in z.files else {}
    except (OSError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not a readable .npz file ({_short(e)})") from None
    except InputError:
        raise
    except ValueError as e:  # numpy: a pickled (non-array) file, a damaged header
        raise InputError(f"{path}: not a readable .npz file ({_short(e)})") from None
    meta = {**attrs, **dict(metadata or {}), "source": str(path), "format": "npz"}
    try:
        ds = TrajectoryDataset.from_arrays(**arrays, metadata=meta, next_observations=nxt)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None
    return ds


def _npz_member(z, key: str, path: Path) -> np.ndarray:
    try:
        return z[key]
    except ValueError as e:
        if "allow_pickle" in str(e):  # an object array: loading it would unpickle, which can run code
            raise InputError(
                f"{path}: array {key!r} holds Python objects (a pickle), which flowrl never loads; save numeric arrays"
            ) from None
        raise InputError(f"{path}: array {key!r} is unreadable ({_short(e)})") from None


def _build(arrays: dict, meta: dict, final: np.ndarray | None, path: Path) -> TrajectoryDataset:
    try:
        return TrajectoryDataset.from_arrays(**arrays, metadata=meta, final_observations=final)
    except ValueError as e:
        raise InputError(f"{path}: {e}") from None


def _final_from_next(dset: Any, ds: TrajectoryDataset, path: Path) -> np.ndarray:
    """Rows of ``next_observations`` at episode ends [E, obs_dim], read block by block so the whole
    array is never held in memory."""
    if dset.shape != ds.observations.shape and dset.shape != (ds.num_transitions,):
        raise InputError(f"{path}: next_observations has shape {dset.shape}, observations has {ds.observations.shape}")
    ends = ds.episode_starts + ds.episode_lengths - 1
    parts = []
    for lo in range(0, ds.num_transitions, _BLOCK_ROWS):
        sel = ends[(ends >= lo) & (ends < lo + _BLOCK_ROWS)]
        if sel.size:
            block = np.asarray(dset[lo : lo + _BLOCK_ROWS], dtype=np.float32)
            parts.append(block.reshape(block.shape[0], -1)[sel - lo])
    final = np.ascontiguousarray(np.concatenate(parts))
    if not np.isfinite(final).all():
        raise InputError(f"{path}: next_observations contains NaN or inf values")
    return final


# ---------------------------------------------------------------------- writing
def write_d4rl_hdf5(
    path: str | os.PathLike,
    data: DatasetOrArrays,
    *,
    metadata: Mapping[str, Any] | None = None,
    compression: str | None = "gzip",
    overwrite: bool = False,
) -> Path:
    """Write a D4RL-format HDF5 file atomically.

    Args:
        path: target file (``.hdf5``/``.h5``); its folder must exist.
        data: a :class:`TrajectoryDataset`, or a mapping with the D4RL keys (and optionally
            ``next_observations``); mappings are validated through ``TrajectoryDataset.from_arrays``.
        metadata: scalar/str values stored as file attributes (merged over the dataset's metadata;
            ``source``/``format`` are not stored).
        compression: h5py compression filter ("gzip" as D4RL's files use, or None).
        overwrite: replace an existing file instead of raising FileExistsError.

    Returns the path written.
    """
    import h5py

    path = Path(path)
    ds = _as_dataset(data)
    attrs = _file_attrs(ds, metadata)
    arrays = ds.arrays()
    _check_target(path, overwrite)
    with atomic.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            for key, arr in arrays.items():
                f.create_dataset(key, data=arr, compression=compression)
            for k, v in attrs.items():
                f.attrs[k] = _h5_attr(v)
    return path


def write_npz(
    path: str | os.PathLike,
    data: DatasetOrArrays,
    *,
    metadata: Mapping[str, Any] | None = None,
    compressed: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write an ``.npz`` with the D4RL keys (plus ``next_observations`` when known and the metadata as a
    ``metadata_json`` string) atomically. Arguments as :func:`write_d4rl_hdf5`."""
    path = Path(path)
    if path.suffix != ".npz":
        raise InputError(f"{path}: an npz dataset file must end in .npz")
    ds = _as_dataset(data)
    attrs = _file_attrs(ds, metadata)
    arrays: dict[str, Any] = ds.arrays()
    _check_target(path, overwrite)
    with atomic.atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a temp name
            (np.savez_compressed if compressed else np.savez)(fh, **arrays, metadata_json=json.dumps(attrs))
    return path


def _as_dataset(data: DatasetOrArrays) -> TrajectoryDataset:
    if isinstance(data, TrajectoryDataset):
        return data
    if not isinstance(data, Mapping):
        raise TypeError(f"expected a TrajectoryDataset or a mapping of D4RL arrays, got {type(data).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise InputError(f"missing required key(s) {', '.join(map(repr, missing))}")
    observations, actions, rewards, terminals, timeouts = (data[k] for k in REQUIRED_KEYS)
    return TrajectoryDataset.from_arrays(
        observations,
        actions,
        rewards,
        terminals,
        timeouts,
        metadata=data.get("metadata"),
        next_observations=data.get("next_observations"),
    )


def _file_attrs(ds: TrajectoryDataset, metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    merged = {**ds.metadata, **dict(metadata or {})}
    out = {}
    for k, v in merged.items():
        if k in ("source", "format") or v is None:
            continue
        if isinstance(v, (bool, int, float, str, np.integer, np.floating, np.bool_)):
            out[k] = v.item() if isinstance(v, np.generic) else v
    # The observation map: its list entries (kept dimensions, dict leaf names) stay lists here.
    obs_map = ObservationMap.from_metadata(merged)
    if obs_map is not None:
        out.update(obs_map.to_metadata())
    return out


def _h5_attr(value: Any) -> Any:
    """An attribute value h5py stores: lists become int64 or UTF-8 string arrays."""
    import h5py

    if not isinstance(value, list):
        return value
    if all(isinstance(v, str) for v in value):
        return np.asarray(value, dtype=h5py.string_dtype())
    return np.asarray(value, dtype=np.int64)


def _check_target(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise InputError(f"{path} is a folder; name a file to write")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (pass overwrite=True to replace it)")
    if not path.parent.is_dir():
        raise MissingInputError(f"folder {path.parent} does not exist")


# ---------------------------------------------------------------------- D4RL names, cache and download
def d4rl_cache_dir() -> Path:
    """``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets`` (D4RL's own cache folder; not created here)."""
    return Path(os.environ.get("D4RL_DATASET_DIR") or Path.home() / ".d4rl" / "datasets").expanduser()


def parse_d4rl_name(name: str) -> tuple[str, str, int] | None:
    """``"hopper-medium-replay-v2"`` -> ``("hopper", "medium-replay", 2)``; None if not D4RL-shaped."""
    m = _D4RL_NAME.fullmatch(name)
    if m is None:
        return None
    return m.group("env"), m.group("level"), int(m.group("version"))


def d4rl_filename(name: str) -> str:
    """The file name D4RL downloads and caches a dataset under: ``hopper_medium_replay-v2.hdf5``."""
    parsed = parse_d4rl_name(name)
    if parsed is None:
        raise InputError(f"{name!r} is not a D4RL dataset name such as 'hopper-medium-v2'")
    suite = d4rl_suite_file(name)
    if suite is not None:
        return suite[1]
    env, level, version = parsed
    stem = f"{env}_{level.replace('-', '_')}"
    return f"{stem}.hdf5" if version == 0 else f"{stem}-v{version}.hdf5"


def find_cached_d4rl(name: str, cache_dir: Path | None = None) -> Path | None:
    """The cached file for a D4RL name (D4RL's own file name, or ``<name>.hdf5``), if present."""
    cache = cache_dir or d4rl_cache_dir()
    for candidate in (d4rl_filename(name), f"{name}.hdf5", f"{name}.h5"):
        p = cache / candidate
        if p.is_file():
            return p
    return None


def d4rl_url(name: str, base_url: str | None = None) -> str:
    """Where to download ``name`` from: ``base_url/<file>`` when a base URL is given (argument or
    ``$FLOWRL_D4RL_BASE_URL``), else D4RL's own server layout."""
    filename = d4rl_filename(name)
    base = base_url or os.environ.get("FLOWRL_D4RL_BASE_URL")
    if base:
        return f"{base.rstrip('/')}/{filename}"
    suite = d4rl_suite_file(name)
    if suite is not None:
        return f"{D4RL_DEFAULT_BASE_URL}/{suite[0]}/{filename}"
    version = parse_d4rl_name(name)[2]  # type: ignore[index]
    folder = _D4RL_FOLDERS.get(version)
    if folder is None:
        raise InputError(f"no known D4RL download location for version v{version} of {name!r}; pass base_url")
    return f"{D4RL_DEFAULT_BASE_URL}/{folder}/{filename}"


def download_d4rl(
    name: str, *, base_url: str | None = None, cache_dir: Path | None = None, timeout: float = 60.0
) -> Path:
    """Download a D4RL dataset into the cache atomically and return its path.

    The file is streamed to a temporary name in the cache folder, checked to be a readable D4RL file,
    then renamed into place; on any failure the temporary file is removed and nothing else changes.
    """
    from tqdm.auto import tqdm

    cache = cache_dir or d4rl_cache_dir()
    url = d4rl_url(name, base_url)
    dest = cache / d4rl_filename(name)
    cache.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(dest) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, disable=None) as bar:
                    while chunk := resp.read(1 << 20):
                        out.write(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as e:
            raise InputError(f"download of {name!r} from {url} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise InputError(
                f"download of {name!r} from {url} failed ({_short(e)}); set FLOWRL_D4RL_BASE_URL or "
                f"pass base_url to use a mirror, or place {dest.name} in {cache}"
            ) from None
        try:
            read_d4rl_hdf5(tmp)
        except ValueError as e:
            raise InputError(f"the file downloaded from {url} is not a valid D4RL dataset: {e}") from None
    return dest


# ---------------------------------------------------------------------- small helpers
def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _short(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg[:200] or type(e).__name__
