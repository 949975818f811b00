"""Minari datasets: the local root, reading a dataset directory (h5py, no jax, no ``minari`` import) and
writing one atomically with :func:`minari.create_dataset_from_buffers`.

On disk a Minari dataset ``ns/env/name-v0`` is ``<root>/ns/env/name-v0/data/`` holding
``metadata.json`` and, for the default HDF5 format, ``main_data.hdf5`` with one group per episode
(``episode_0``, ...): ``observations`` [T+1, obs_dim] (the reset observation, then one per step),
``actions`` [T, act_dim], ``rewards`` [T], ``terminations`` [T], ``truncations`` [T]. Dict observations
(goal environments) are nested groups, one dataset per leaf (``observations/desired_goal/kettle``
[T+1, 7]); they are flattened into rows by an :class:`~flowrl.envs.observations.ObservationMap`.
Flattened into D4RL rows, terminations become ``terminals`` and truncations ``timeouts``; the extra last
observation of each episode becomes ``final_observations``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flowrl.errors import InputError, OutputExistsError

from .dataset import TrajectoryDataset
from .observations import METADATA_KEYS, ObservationMap, dict_keys
from .specs import suite_task

__all__ = [
    "minari_root",
    "minari_data_dir",
    "is_minari_dir",
    "read_minari_dir",
    "list_minari_ids",
    "resolve_minari_id",
    "write_minari_dataset",
    "write_minari_episodes",
]

_RESERVED_KEYS = {
    "dataset_id",
    "observation_space",
    "action_space",
    "env_spec",
    "data_format",
    "jpeg_encoding",
    "minari_version",
    "total_episodes",
    "total_steps",
    "dataset_size",
}
# Keys create_dataset_from_buffers takes as arguments (they also silence its "is None" warnings).
_MINARI_ARGS = ("algorithm_name", "author", "author_email", "code_permalink", "description")


def minari_root() -> Path:
    """The local Minari datasets folder: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets`` (not created)."""
    return Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets").expanduser()


# ---------------------------------------------------------------------- reading
def minari_data_dir(path: str | os.PathLike) -> Path | None:
    """The ``data`` folder (with ``metadata.json``) of a Minari dataset directory, given the dataset
    folder or its ``data`` folder; None if ``path`` is not one."""
    p = Path(path)
    for cand in (p / "data", p):
        if (cand / "metadata.json").is_file():
            return cand
    return None


def is_minari_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir() and minari_data_dir(path) is not None


def read_minari_dir(path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> TrajectoryDataset:
    """Load a local Minari dataset directory into a :class:`TrajectoryDataset`.

    HDF5-format datasets are read with h5py directly (fast, no jax). Other formats (arrow, parquet) go
    through ``minari``'s storage reader, which needs their optional dependencies. Actions must be flat
    (Box); observations are flat or (nested) dicts, which are flattened into rows by the dataset's
    :class:`~flowrl.envs.observations.ObservationMap` (recorded in the metadata, or the default key order)
    and the map is recorded in the returned dataset's metadata.

    An episode whose last step has neither flag (recording stopped) gets ``timeouts=True`` there so the
    episode boundary survives flattening — except the dataset's last episode, which is kept as a
    trailing unflagged episode, as in D4RL files.

    Raises:
        ValueError: not a Minari directory, unreadable metadata or data; the message names the file.
    """
    path = Path(path)
    data_dir = minari_data_dir(path)
    if data_dir is None:
        raise InputError(f"{path}: not a Minari dataset directory (no data/metadata.json)")
    meta_file = data_dir / "metadata.json"
    try:
        raw = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{meta_file}: unreadable Minari metadata ({e})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{meta_file}: Minari metadata must be a JSON object")
    fmt = raw.get("data_format", "hdf5")
    episodes = _read_hdf5_episodes(data_dir) if fmt == "hdf5" else _read_other_episodes(data_dir, fmt)
    if not episodes:
        raise InputError(f"{data_dir}: empty dataset: the Minari dataset has no episodes")

    obs_map = _observation_map(raw, episodes[0]["observations"], data_dir)
    obs_parts, final, act, rew, term, trunc = [], [], [], [], [], []
    for i, ep in enumerate(episodes):
        t = len(ep["rewards"])
        o = ep["observations"]
        rows = _rows(o)
        if t == 0 or rows != t + 1:
            raise InputError(f"{data_dir}: episode {i} has {rows} observations for {t} steps (expected steps + 1)")
        if isinstance(o, Mapping):
            if obs_map is None:  # episode 0's observations are flat arrays
                raise InputError(f"{data_dir}: episode {i} has dict observations but episode 0 has flat arrays")
            try:
                o = obs_map.apply_rows(o, t + 1)
            except ValueError as e:
                raise InputError(f"{data_dir}: episode {i}: {e}") from None
        else:
            o = np.asarray(o)
        obs_parts.append(o[:-1].reshape(t, -1))
        final.append(o[-1].reshape(-1))
        act.append(np.asarray(ep["actions"]).reshape(t, -1))
        rew.append(np.asarray(ep["rewards"]).reshape(t))
        te = np.asarray(ep["terminations"], dtype=bool).reshape(t).copy()
        tr = np.asarray(ep["truncations"], dtype=bool).reshape(t).copy()
        if i < len(episodes) - 1 and not (te[-1] or tr[-1]):
            tr[-1] = True
        # a flag before the last step would split this episode in two when flattened
        if (te[:-1] | tr[:-1]).any():
            raise InputError(f"{data_dir}: episode {i} has a termination/truncation flag before its last step")
        term.append(te)
        trunc.append(tr)

    meta = {k: v for k, v in raw.items() if k not in ("observation_space", "action_space")}
    extra = meta.pop("flowrl_metadata", None)
    if isinstance(extra, dict):
        meta = {**extra, **meta}
    gym_id = _env_id_from_spec(raw.get("env_spec"))
    if gym_id is not None:
        meta.setdefault("gym_id", gym_id)
    if obs_map is not None:
        meta.update(obs_map.to_metadata())
    if not isinstance(extra, dict):
        _keep_minari_references(meta)
    meta.update(dict(metadata or {}))
    meta.update(source=str(data_dir.parent if data_dir.name == "data" else data_dir), format="minari")
    try:
        return TrajectoryDataset.from_arrays(
            np.concatenate(obs_parts),
            np.concatenate(act),
            np.concatenate(rew),
            np.concatenate(term),
            np.concatenate(trunc),
            meta,
            final_observations=np.stack(final),
        )
    except ValueError as e:
        raise InputError(f"{data_dir}: {e}") from None


def _keep_minari_references(meta: dict[str, Any]) -> None:
    """For D4RL's goal and manipulation suites, Minari computes reference scores in its own evaluation
    environment (``eval_env_spec``: e.g. a continuing AntMaze whose return is not 0/1), while flowrl
    evaluates in its spec's environment (:mod:`flowrl.envs.specs`) with D4RL's references; Minari's are
    kept as ``minari_ref_min_score``/``minari_ref_max_score`` so that they do not normalize flowrl's returns.
    Datasets flowrl wrote itself (``flowrl_metadata``) keep theirs."""
    name = meta.get("dataset_id")
    if not isinstance(name, str) or suite_task(name) is None:
        return
    for key in ("ref_min_score", "ref_max_score"):
        if key in meta:
            meta[f"minari_{key}"] = meta.pop(key)


def _observation_map(raw: Mapping[str, Any], first_obs: Any, data_dir: Path) -> ObservationMap | None:
    """How the stored observations become rows: the map recorded in the metadata, else for dict
    observations the default order (:func:`~flowrl.envs.observations.dict_keys`), else None.

    Flat stored observations are rows already (selected, when ``observation_indices`` is recorded);
    dict ones are whole environment observations, flattened and selected here by the map."""
    try:
        recorded = ObservationMap.from_metadata(raw)
        if not isinstance(first_obs, Mapping):
            if recorded is not None and recorded.keys is not None:
                raise InputError("the metadata records observation_keys but the observations are flat arrays")
            return recorded
        if recorded is not None and recorded.keys is not None:
            return recorded
        keys, sizes = dict_keys(first_obs, rows=True)
        indices = None if recorded is None else recorded.indices
        return ObservationMap(keys=keys, key_sizes=sizes, indices=indices)
    except ValueError as e:
        raise InputError(f"{data_dir}: {e}") from None


def _rows(obs: Any) -> int:
    """Leading rows of stored observations (an array, or a dict whose leaves all have them)."""
    if isinstance(obs, Mapping):
        counts = {_rows(v) for v in obs.values()}
        return counts.pop() if len(counts) == 1 else -1
    return int(np.shape(obs)[0]) if np.ndim(obs) else 0


_EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")


def _read_hdf5_episodes(data_dir: Path) -> list[dict[str, Any]]:
    import h5py

    file = data_dir / "main_data.hdf5"
    try:
        f = h5py.File(file, "r")
    except OSError as e:
        raise InputError(f"{file}: not a readable HDF5 file ({_short(e)})") from None
    episodes = []
    try:
        with f:
            names = sorted((k for k in f.keys() if k.startswith("episode_")), key=lambda k: int(k[8:]))
            episodes = [{key: _read_array(f, f"{name}/{key}", file) for key in _EPISODE_KEYS} for name in names]
    except (OSError, RuntimeError, TypeError) as e:
        raise InputError(f"{file}: corrupt Minari HDF5 data ({_short(e)})") from None
    return episodes


def _read_array(f: Any, path: str, file: Path) -> np.ndarray | dict[str, Any]:
    """Read a whole dataset through h5py's low-level API: about 3x less per-call overhead than
    ``f[path][()]``, which matters with thousands of short episodes. A group (a dict observation, stored by
    Minari as nested groups) comes back as a dict of its members."""
    import h5py

    try:
        did = h5py.h5d.open(f.id, path.encode())
    except KeyError:
        node = f.get(path)
        if isinstance(node, h5py.Group):
            if path.endswith("/actions") or any(k.startswith("_index_") for k in node):
                raise InputError(
                    f"{file}: {path} is a dict/tuple space; only flat (Box) actions and Box or dict "
                    "observations are supported"
                ) from None
            return {k: _read_array(f, f"{path}/{k}", file) for k in node}
        raise InputError(f"{file}: {path} is missing") from None
    if did.dtype.kind not in "biuf":
        return f[path][()]
    arr = np.empty(did.shape, dtype=did.dtype)
    if arr.size:
        did.read(h5py.h5s.ALL, h5py.h5s.ALL, arr)
    return arr


def _read_other_episodes(data_dir: Path, fmt: str) -> list[dict[str, Any]]:
    try:
        from minari.dataset.minari_storage import MinariStorage

        storage = MinariStorage.read(data_dir)
        return list(storage.get_episodes(range(storage.total_episodes)))
    except ImportError as e:
        raise InputError(f"{data_dir}: reading Minari format {fmt!r} needs {e.name or 'an optional package'}") from None
    except Exception as e:  # storage backends raise assorted errors on damaged files
        raise InputError(f"{data_dir}: unreadable Minari {fmt!r} data ({_short(e)})") from None


def _env_id_from_spec(env_spec: Any) -> str | None:
    if isinstance(env_spec, str):
        try:
            env_spec = json.loads(env_spec)
        except json.JSONDecodeError:
            return None
    if isinstance(env_spec, dict) and isinstance(env_spec.get("id"), str):
        return env_spec["id"]
    return None


def list_minari_ids(root: Path | None = None) -> list[str]:
    """Ids of the local Minari datasets under ``root`` (hidden folders, e.g. temporary ones, skipped)."""
    root = root or minari_root()
    out: list[str] = []
    if not root.is_dir():
        return out

    def walk(d: Path, prefix: str) -> None:
        for child in sorted(d.iterdir()):
            if not child.is_dir() or child.name.startswith("."):
                continue
            rel = f"{prefix}{child.name}"
            if (child / "data" / "metadata.json").is_file():
                out.append(rel)
            else:
                walk(child, rel + "/")

    walk(root, "")
    return out


def resolve_minari_id(dataset_id: str, root: Path | None = None) -> Path | None:
    """The local folder of a Minari id; an id without ``-vN`` picks the highest local version.

    Raises InputError for an id that is not ``name/name/...`` (letters, digits, ``_`` and ``-``): ``..``
    or an absolute path would reach outside the Minari root.
    """
    if not re.fullmatch(r"[-\w]+(?:/[-\w]+)*", dataset_id):
        raise InputError(
            f"malformed Minari dataset id {dataset_id!r}: expected 'namespace/env/name-vN' (letters, digits, _ and -)"
        )
    root = root or minari_root()
    if re.search(r"-v\d+$", dataset_id):
        p = root / dataset_id
        return p if (p / "data" / "metadata.json").is_file() else None
    parent = (root / dataset_id).parent
    stem = Path(dataset_id).name
    best: tuple[int, Path] | None = None
    if parent.is_dir():
        for child in parent.iterdir():
            m = re.fullmatch(re.escape(stem) + r"-v(\d+)", child.name)
            if m and (child / "data" / "metadata.json").is_file():
                if best is None or int(m.group(1)) > best[0]:
                    best = (int(m.group(1)), child)
    return None if best is None else best[1]


# ---------------------------------------------------------------------- writing
def write_minari_dataset(
    dataset_id: str,
    observations: np.ndarray,
    actions: np.ndarray,
    rewards: np.ndarray,
    terminals: np.ndarray,
    timeouts: np.ndarray,
    *,
    env_id: str | None,
    metadata: Mapping[str, Any] | None = None,
    next_observations: np.ndarray | None = None,
    final_observations: np.ndarray | None = None,
    overwrite: bool = False,
    root: str | os.PathLike | None = None,
) -> Path:
    """Write flat D4RL-style arrays as a local Minari dataset, atomically; return its folder.

    Episodes are split on ``terminals`` and ``timeouts`` exactly as :class:`TrajectoryDataset` does
    (the arrays are validated the same way). Minari stores one more observation per episode than steps;
    it comes from ``final_observations`` [E, obs_dim], else ``next_observations`` [N, obs_dim] at each
    episode's last row, else (unknown) the last observation repeated — recorded as
    ``final_observation_repeated: true`` in the metadata.

    Args:
        dataset_id: Minari id ``namespace/env/name-vN``, e.g. ``"flowrl/hopper/medium-v0"``.
        observations, actions, rewards, terminals, timeouts: [N, obs_dim], [N, act_dim], [N], [N], [N].
        env_id: gymnasium id the data came from (stored as Minari's ``env_spec``, so
            ``minari.load_dataset(id).recover_environment()`` works); None stores only Box spaces.
        metadata: JSON-serializable extras. ``ref_min_score``/``ref_max_score`` are stored where Minari
            reads them (``get_normalized_score``); ``algorithm_name``, ``author``, ``author_email``,
            ``code_permalink``, ``description`` go to Minari's own fields; everything else is kept under
            ``flowrl_metadata`` and comes back in ``load_dataset(...).metadata``.
        overwrite: replace an existing dataset with this id; otherwise FileExistsError.
        root: Minari root folder (default :func:`minari_root`).

    The dataset is built in a hidden temporary folder under ``root`` (Minari skips hidden folders) and
    renamed into place, so an interrupted call leaves nothing that loads. Not thread-safe: Minari reads
    its root from ``$MINARI_DATASETS_PATH``, which this function sets while it runs.

    Raises:
        FileExistsError: the id exists and ``overwrite`` is False.
        ValueError: malformed id, invalid arrays, non-JSON metadata.
    """
    from minari.data_collector import EpisodeBuffer

    if not re.fullmatch(r"[-\w]+(?:/[-\w]+)*-v\d+", dataset_id):
        raise InputError(f"malformed Minari dataset id {dataset_id!r}: expected 'namespace/env/name-vN'")
    meta = dict(metadata or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise InputError(f"metadata for {dataset_id!r} is not JSON-serializable: {e}") from None
    # absolute: Minari joins the root it reads from $MINARI_DATASETS_PATH with paths that already hold it
    root_dir = (Path(root).expanduser() if root is not None else minari_root()).absolute()
    target = root_dir / dataset_id
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"Minari dataset {dataset_id!r} already exists at {target} (pass overwrite=True to replace it)"
        )

    # The observation map goes at the top level of Minari's metadata, where other readers find it too.
    obs_map = ObservationMap.from_metadata(meta)
    obs_entries = {} if obs_map is None else obs_map.to_metadata()
    ds = TrajectoryDataset.from_arrays(
        observations,
        actions,
        rewards,
        terminals,
        timeouts,
        {"source": dataset_id, **obs_entries},
        next_observations=next_observations,
        final_observations=final_observations,
    )
    final = ds.final_observations
    if final is None:
        final = ds.observations[ds.episode_starts + ds.episode_lengths - 1]
        meta["final_observation_repeated"] = True
    buffers = []
    for k, (s, n) in enumerate(zip(ds.episode_starts.tolist(), ds.episode_lengths.tolist())):
        buffers.append(
            EpisodeBuffer(
                id=k,
                observations=np.concatenate([ds.observations[s : s + n], final[k : k + 1]]),
                actions=ds.actions[s : s + n],
                rewards=ds.rewards[s : s + n],
                terminations=ds.terminals[s : s + n],
                truncations=ds.timeouts[s : s + n],
            )
        )

    spaces = None
    if env_id is None:
        from gymnasium.spaces import Box

        spaces = (Box(-np.inf, np.inf, (ds.obs_dim,), np.float32), Box(-np.inf, np.inf, (ds.act_dim,), np.float32))
    return _write_buffers(dataset_id, buffers, meta, env_id, spaces, obs_entries, root_dir, overwrite)


def write_minari_episodes(
    dataset_id: str,
    episodes: list[Mapping[str, Any]],
    *,
    env_spec: Any,
    metadata: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    root: str | os.PathLike | None = None,
) -> Path:
    """Write whole episodes, observations as the environment gave them (dicts included), as a local Minari
    dataset, atomically; return its folder. This is Minari's own layout for goal environments
    (``observations/achieved_goal`` ... one dataset per leaf), readable by ``minari.load_dataset``.

    Args:
        dataset_id: Minari id ``namespace/env/name-vN``.
        episodes: per episode ``observations`` (an array [T+1, ...] or a (nested) dict of them),
            ``actions`` [T, act_dim], ``rewards`` [T], ``terminations`` [T], ``truncations`` [T]; optional
            ``infos`` (a dict of [T+1, ...] arrays) and ``seed``.
        env_spec: the gymnasium ``EnvSpec`` (or id) the data came from, kwargs included.
        metadata, overwrite, root: as :func:`write_minari_dataset`.
    """
    from minari.data_collector import EpisodeBuffer

    if not re.fullmatch(r"[-\w]+(?:/[-\w]+)*-v\d+", dataset_id):
        raise InputError(f"malformed Minari dataset id {dataset_id!r}: expected 'namespace/env/name-vN'")
    if not episodes:
        raise InputError(f"no episodes to write to {dataset_id!r}")
    meta = dict(metadata or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as e:
        raise InputError(f"metadata for {dataset_id!r} is not JSON-serializable: {e}") from None
    root_dir = Path(root).expanduser() if root is not None else minari_root()
    target = root_dir / dataset_id
    if target.exists() and not overwrite:
        raise OutputExistsError(
            f"Minari dataset {dataset_id!r} already exists at {target} (pass overwrite=True to replace it)"
        )
    buffers = [
        EpisodeBuffer(
            id=e,
            seed=ep.get("seed"),
            observations=ep["observations"],
            actions=np.asarray(ep["actions"]),
            rewards=np.asarray(ep["rewards"]),
            terminations=np.asarray(ep["terminations"], dtype=bool),
            truncations=np.asarray(ep["truncations"], dtype=bool),
            infos=ep.get("infos"),
        )
        for e, ep in enumerate(episodes)
    ]
    gym_id = env_spec if isinstance(env_spec, str) else env_spec.id
    meta.setdefault("gym_id", gym_id)
    return _write_buffers(dataset_id, buffers, meta, env_spec, None, {}, root_dir, overwrite)


def _write_buffers(
    dataset_id: str,
    buffers: list,
    meta: dict[str, Any],
    env: Any,
    spaces: tuple[Any, Any] | None,
    obs_entries: dict[str, Any],
    root_dir: Path,
    overwrite: bool,
) -> Path:
    """Build the dataset with ``minari.create_dataset_from_buffers`` in a hidden stage under ``root_dir`` and
    rename it into place (see :func:`write_minari_dataset`)."""
    import minari

    target = root_dir / dataset_id
    ref = {k: float(meta.pop(k)) for k in ("ref_min_score", "ref_max_score") if meta.get(k) is not None}
    kwargs: dict[str, Any] = {k: meta.pop(k) for k in _MINARI_ARGS if meta.get(k) is not None}
    kwargs.setdefault("author", "flowrl")
    kwargs.setdefault("algorithm_name", "unknown")
    kwargs.setdefault("description", f"flowrl dataset {dataset_id}")
    kwargs.setdefault("code_permalink", "https://github.com/flowrl/flowrl")
    kwargs.setdefault("author_email", "unknown")
    if spaces is not None:
        kwargs["observation_space"], kwargs["action_space"] = spaces
    else:
        kwargs["env"] = env
        meta.setdefault("gym_id", env if isinstance(env, str) else env.id)
    extra = {k: v for k, v in meta.items() if k not in _RESERVED_KEYS and k not in METADATA_KEYS}

    root_dir.mkdir(parents=True, exist_ok=True)
    with _staging_root(root_dir) as stage:
        with _minari_root_env(stage), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Minari warns about optional fields
            dataset = minari.create_dataset_from_buffers(dataset_id, buffers, **kwargs)
            dataset.storage.update_metadata({**ref, **obs_entries, "flowrl_metadata": extra})
        _copy_namespace_metadata(stage, root_dir, dataset_id)
        built = stage / dataset_id
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            if not overwrite:  # another process wrote this id while we were building ours
                raise FileExistsError(f"Minari dataset {dataset_id!r} appeared at {target} while writing it")
            # Move the old one aside (into the hidden stage, removed with it) before renaming the new one in.
            os.replace(target, stage / ".replaced")
        try:
            os.replace(built, target)
        except OSError as e:
            if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(f"Minari dataset {dataset_id!r} appeared at {target} while writing it") from None
            raise
    return target


@contextlib.contextmanager
def _staging_root(root: Path) -> Iterator[Path]:
    stage = Path(tempfile.mkdtemp(prefix=".flowrl-tmp-", dir=root))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def _minari_root_env(path: Path) -> Iterator[None]:
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _copy_namespace_metadata(stage: Path, root: Path, dataset_id: str) -> None:
    """Minari namespaces need a ``namespace_metadata.json`` in each namespace folder; add missing ones."""
    parts = dataset_id.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        rel = Path(*parts[:i]) / "namespace_metadata.json"
        src, dst = stage / rel, root / rel
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or type(e).__name__
