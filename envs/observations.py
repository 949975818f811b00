"""What the model sees of an environment's observation: :class:`ObservationMap` and its gymnasium wrapper.

A model takes one flat float vector per step. Environments give either a flat array (MuJoCo
locomotion, Adroit) or a dictionary (gymnasium-robotics mazes and Kitchen: ``observation``,
``achieved_goal``, ``desired_goal``; Kitchen's goals are themselves dicts keyed by task). An
:class:`ObservationMap` says how to turn one into the other, in two steps:

1. **Flatten** (dict observations only): the leaves named in ``keys`` are flattened (C order) and
   concatenated in that order. Nested keys are paths joined by ``/`` (``"desired_goal/microwave"``).
   The default order (:func:`dict_keys`) is keys sorted by name at every level, which is also the order of
   ``gymnasium.spaces.flatten`` for a ``Dict`` space built from a plain dict (gymnasium sorts those): for
   a maze, ``achieved_goal, desired_goal, observation``.
2. **Select** (optional): ``indices`` picks dimensions of the flattened vector, in the order given (no
   repeats), e.g. only the velocities of a MuJoCo observation. ``size`` is the length of the full
   flattened vector, so a selection made for one environment is refused on another.

The same map is used in both directions of the data's life: loaders apply it to the stored observations
(:meth:`ObservationMap.apply_rows`) and record it in the dataset's metadata; agents store it in their
checkpoint; every rollout wraps the live environment in :func:`wrap_env` built from that checkpoint, so
the model sees exactly what it was trained on without anyone wiring it by hand.

On disk (HDF5 file attributes, ``.npz`` metadata, Minari metadata, a dataset's ``metadata``) the map is
four entries (see :data:`METADATA_KEYS`); ``observation_indices`` alone is the contract for datasets that
keep a subset of a flat observation.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from flowrl.errors import InputError

__all__ = [
    "ObservationMap",
    "METADATA_KEYS",
    "dict_keys",
    "map_for_space",
    "wrap_env",
    "check_env_space",
]

METADATA_KEYS = ("observation_keys", "observation_key_sizes", "observation_indices", "observation_size")
"""Dataset metadata entries of a map: leaf paths (str list), their flat sizes (int list), the kept
dimensions (int list) and the full flattened size (int). Absent entries mean "none"."""


@dataclass(frozen=True)
class ObservationMap:
    """How an environment observation becomes the model's flat input vector (see the module doc)."""

    keys: tuple[str, ...] | None = None
    """Dict observations: leaf paths in concatenation order (``"observation"``, ``"desired_goal/kettle"``);
    None for environments whose observation is a flat array."""
    key_sizes: tuple[int, ...] | None = None
    """Flat size of each leaf in ``keys`` (same length as ``keys``); None exactly when ``keys`` is None."""
    indices: tuple[int, ...] | None = None
    """Kept dimensions of the flattened observation, in order, without repeats; None keeps all."""
    size: int | None = None
    """Length of the full flattened observation (before ``indices``). Filled in from ``key_sizes`` for
    dict observations; for flat ones it may be unknown (None), and is then not checked."""

    def __post_init__(self) -> None:
        if (self.keys is None) != (self.key_sizes is None):
            raise InputError("observation map: keys and key_sizes must be given together")
        if self.keys is not None:
            keys = tuple(self.keys)
            sizes = tuple(_ints(self.key_sizes, "observation_key_sizes"))
            if not keys:
                raise InputError("observation map: keys is empty (a dict observation needs at least one leaf)")
            if len(keys) != len(sizes):
                raise InputError(f"observation map: {len(keys)} keys but {len(sizes)} key sizes")
            bad = [k for k in keys if not isinstance(k, str) or not k or k.startswith("/") or k.endswith("/")]
            if bad:
                raise InputError(
                    f"observation map: invalid key {bad[0]!r} (leaf paths look like 'desired_goal/kettle')"
                )
            dup = _first_repeat(keys)
            if dup is not None:
                raise InputError(f"observation map: key {dup!r} listed twice")
            nested = [k for k in keys if any(o.startswith(k + "/") for o in keys)]
            if nested:
                raise InputError(f"observation map: key {nested[0]!r} is both a leaf and a dict")
            if min(sizes) < 1:
                raise InputError(f"observation map: key sizes must be >= 1, got {list(sizes)}")
            total = sum(sizes)
            if self.size is not None and int(self.size) != total:
                raise InputError(f"observation map: size {self.size} but the key sizes add up to {total}")
            object.__setattr__(self, "keys", keys)
            object.__setattr__(self, "key_sizes", sizes)
            object.__setattr__(self, "size", total)
        elif self.size is not None:
            size = _ints([self.size], "observation_size")[0]
            if size < 1:
                raise InputError(f"observation map: observation_size must be >= 1, got {size}")
            object.__setattr__(self, "size", size)
        if self.indices is not None:
            idx = tuple(_ints(self.indices, "observation_indices"))
            if not idx:
                raise InputError("observation_indices is empty: keep at least one dimension")
            dup = _first_repeat(idx)
            if dup is not None:
                raise InputError(f"observation_indices lists dimension {dup} twice")
            if min(idx) < 0:
                raise InputError(f"observation_indices has negative entry {min(idx)}")
            if self.size is not None and max(idx) >= self.size:
                raise InputError(
                    f"observation_indices entry {max(idx)} is out of range for an observation of size {self.size}"
                )
            object.__setattr__(self, "indices", idx)
        if self.keys is None and self.indices is None:
            raise InputError("observation map: give keys (a dict observation) or indices (a selection), or no map")

    # ------------------------------------------------------------------ sizes
    @property
    def out_dim(self) -> int | None:
        """Length of the vector the model sees (None: a flat observation of unknown size, unselected)."""
        if self.indices is not None:
            return len(self.indices)
        return self.size

    def leaves(self) -> list[tuple[str, int]]:
        """(leaf path, flat size) of each dict leaf, in concatenation order; empty for a flat observation."""
        if self.keys is None or self.key_sizes is None:  # set together (checked in __post_init__)
            return []
        return list(zip(self.keys, self.key_sizes))

    # ------------------------------------------------------------------ applying
    def flatten_rows(self, obs: Any, rows: int) -> np.ndarray:
        """The flattened full observation of ``rows`` stacked observations: float [rows, size].

        ``obs`` is a (nested) dict of arrays with ``rows`` leading rows per leaf (``keys`` set), or an
        array [rows, ...] (no keys). Leaves keep their dtype through the concatenation (numpy's common
        type); callers cast.
        """
        if self.keys is None:
            if isinstance(obs, Mapping):
                raise InputError(
                    f"observations are a dict (keys {', '.join(sorted(obs))}) but the map describes a flat array"
                )
            arr = np.asarray(obs)
            return arr.reshape(rows, -1)
        if not isinstance(obs, Mapping):
            raise InputError(
                f"observations are a flat array but the map expects a dict with keys {', '.join(self.keys)}"
            )
        parts = []
        for key, n in self.leaves():
            leaf = np.asarray(_lookup(obs, key))
            if leaf.size != rows * n:
                raise InputError(
                    f"observation key {key!r} has shape {leaf.shape}, expected {rows} row(s) of {n} value(s)"
                )
            parts.append(leaf.reshape(rows, n))
        return np.concatenate(parts, axis=1)

    def apply_rows(self, obs: Any, rows: int) -> np.ndarray:
        """What the model sees for ``rows`` stacked observations: [rows, out_dim] (flatten, then select)."""
        flat = self.flatten_rows(obs, rows)
        if self.size is not None and flat.shape[1] != self.size:
            raise InputError(f"observations have {flat.shape[1]} values per row, the map expects {self.size}")
        if self.indices is not None:
            if max(self.indices) >= flat.shape[1]:
                raise InputError(
                    f"observation_indices entry {max(self.indices)} is out of range for observations of size "
                    f"{flat.shape[1]}"
                )
            flat = flat[:, list(self.indices)]
        return flat

    def apply(self, obs: Any) -> np.ndarray:
        """What the model sees for one observation: [out_dim]."""
        return self.apply_rows(obs, 1)[0]

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (lists and ints); :meth:`from_dict` inverts it."""
        return {
            "keys": None if self.keys is None else list(self.keys),
            "key_sizes": None if self.key_sizes is None else list(self.key_sizes),
            "indices": None if self.indices is None else list(self.indices),
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObservationMap:
        unknown = set(d) - {"keys", "key_sizes", "indices", "size"}
        if unknown:
            raise InputError(f"observation map: unknown field(s) {', '.join(sorted(unknown))}")
        keys = d.get("keys")
        return cls(
            keys=None if keys is None else tuple(_strs(keys, "keys")),
            key_sizes=None if d.get("key_sizes") is None else tuple(_ints(d["key_sizes"], "key_sizes")),
            indices=None if d.get("indices") is None else tuple(_ints(d["indices"], "indices")),
            size=d.get("size"),
        )

    def to_metadata(self) -> dict[str, Any]:
        """The dataset-metadata entries of :data:`METADATA_KEYS` (only those that are set)."""
        out: dict[str, Any] = {}
        if self.keys is not None:
            out["observation_keys"] = list(self.keys)
            out["observation_key_sizes"] = [n for _, n in self.leaves()]
        if self.indices is not None:
            out["observation_indices"] = list(self.indices)
        if self.size is not None:
            out["observation_size"] = self.size
        return out

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> ObservationMap | None:
        """The map recorded in dataset metadata (HDF5 attributes, Minari metadata, ...), or None."""
        present = {k: meta[k] for k in METADATA_KEYS if meta.get(k) is not None}
        if not present.keys() & {"observation_keys", "observation_indices"}:
            return None
        keys = present.get("observation_keys")
        if keys is not None:
            keys = tuple(_strs(keys, "observation_keys"))
            if "observation_key_sizes" not in present:
                raise InputError("observation_keys is given without observation_key_sizes")
        sizes = present.get("observation_key_sizes")
        return cls(
            keys=keys,
            key_sizes=None if sizes is None else tuple(_ints(sizes, "observation_key_sizes")),
            indices=None
            if "observation_indices" not in present
            else tuple(_ints(present["observation_indices"], "observation_indices")),
            size=present.get("observation_size"),
        )

    def describe(self) -> str:
        """One line for messages and ``flowrl datasets info``."""
        parts = []
        if self.keys is not None:
            parts.append("dict flattened as " + " + ".join(f"{k}[{n}]" for k, n in self.leaves()))
        if self.indices is not None:
            of = f" of {self.size}" if self.size is not None else ""
            parts.append(f"{len(self.indices)} dimension(s){of} kept ({_span_text(self.indices)})")
        return "; ".join(parts)


# ---------------------------------------------------------------------- layouts of spaces and samples
def dict_keys(obs_or_space: Any, *, rows: bool = False) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The default flattening of a dict observation (or a gymnasium ``Dict`` space): leaf paths sorted by
    name at every level, and their flat sizes. ``rows=True``: the leaves are stacked observations with
    one leading row dimension, which does not count in the sizes."""
    leaves: list[tuple[str, int]] = []
    _walk(obs_or_space, "", leaves, rows)
    return tuple(k for k, _ in leaves), tuple(n for _, n in leaves)


def _walk(node: Any, prefix: str, out: list[tuple[str, int]], rows: bool) -> None:
    children = _children(node)
    if children is None:
        out.append((prefix, _flat_size(node, rows)))
        return
    if not children:
        raise InputError(f"observation dict {prefix or '(top level)'!r} is empty")
    for name in sorted(children):
        if not isinstance(name, str) or "/" in name or not name:
            raise InputError(f"observation key {name!r} is not usable (keys must be non-empty strings without '/')")
        _walk(children[name], f"{prefix}/{name}" if prefix else name, out, rows)


def _children(node: Any) -> Mapping[str, Any] | None:
    if isinstance(node, Mapping):
        return node
    spaces = getattr(node, "spaces", None)  # gymnasium.spaces.Dict (Tuple spaces have a tuple here)
    if isinstance(spaces, Mapping):
        return spaces
    if spaces is not None:
        raise InputError(f"unsupported observation space {type(node).__name__}: only Box and (nested) Dict spaces")
    return None


def _flat_size(leaf: Any, rows: bool = False) -> int:
    shape = getattr(leaf, "shape", None)
    if shape is None:
        if isinstance(leaf, (int, float, list, tuple)):  # a plain-Python sample leaf
            shape = np.shape(leaf)
        else:
            raise InputError(f"unsupported observation space {type(leaf).__name__}: only Box and (nested) Dict spaces")
    if rows:
        if len(shape) == 0:
            raise InputError("stacked observations need a leading row dimension on every leaf")
        shape = shape[1:]
    return int(np.prod(shape, dtype=np.int64))


def map_for_space(space: Any) -> ObservationMap | None:
    """The default map of an environment's observation space: a dict space gets :func:`dict_keys`'s
    order, a flat (Box) space needs no map (None)."""
    if _children(space) is None:
        return None
    keys, sizes = dict_keys(space)
    return ObservationMap(keys=keys, key_sizes=sizes)


def check_env_space(obs_map: ObservationMap | None, space: Any, env_id: str = "the environment") -> int:
    """Check that ``obs_map`` fits an environment's observation space; return the model's input size.

    Raises ValueError (one line naming the problem) when: the map names dict keys the environment does not
    have (e.g. goals recorded in the dataset but no ``desired_goal`` in the environment) or a leaf of another
    size; the map is for a flat observation but the environment's is a dict, or the reverse; the full
    size differs; an index is out of range. ``obs_map=None`` accepts flat spaces only.
    """
    children = _children(space)
    if obs_map is None or obs_map.keys is None:
        if children is not None:
            keys, _ = dict_keys(space)
            raise InputError(
                f"{env_id} gives dict observations (keys {', '.join(keys)}) but the data records no dict layout "
                "(observation_keys); load the data through flowrl so that its layout is recorded"
            )
        full = _flat_size(space)
        if obs_map is None:
            return full
    else:
        if children is None:
            raise InputError(
                f"the data's observations were flattened from a dict ({', '.join(obs_map.keys)}) but {env_id} "
                f"gives a flat array of size {_flat_size(space)}"
            )
        env_keys, env_sizes = dict_keys(space)
        have = dict(zip(env_keys, env_sizes))
        for key, n in obs_map.leaves():
            if key not in have:
                hint = ""
                if key.split("/")[0] == "desired_goal":
                    hint = " (the data has goals, the environment takes none: use a goal-conditioned environment)"
                raise InputError(
                    f"observation key {key!r} of the data is not in {env_id}'s observations "
                    f"(it has {', '.join(env_keys)}){hint}"
                )
            if have[key] != n:
                raise InputError(f"observation key {key!r} has size {n} in the data but {have[key]} in {env_id}")
        full = sum(n for _, n in obs_map.leaves())
    if obs_map.size is not None and obs_map.size != full:
        raise InputError(
            f"the data's observations were selected from a vector of size {obs_map.size} but {env_id}'s has "
            f"size {full} (observation_size does not match the environment)"
        )
    if obs_map.indices is not None:
        if max(obs_map.indices) >= full:
            raise InputError(
                f"observation_indices entry {max(obs_map.indices)} is out of range for {env_id}'s observation "
                f"of size {full}"
            )
        return len(obs_map.indices)
    return full


# ---------------------------------------------------------------------- the gymnasium wrapper
def wrap_env(env: Any, obs_map: ObservationMap | None) -> Any:
    """``env`` with its observations mapped by ``obs_map`` (a Box of the model's input size).

    ``obs_map=None`` returns flat-observation environments unchanged and refuses dict ones (see
    :func:`check_env_space`). Example::

        env = wrap_env(gymnasium.make("PointMaze_UMaze-v3"), ObservationMap.from_dict(saved))
        obs, _ = env.reset(seed=0)          # float32 [8]: achieved_goal, desired_goal, observation
    """
    env_id = env.spec.id if getattr(env, "spec", None) is not None else type(env.unwrapped).__name__
    check_env_space(obs_map, env.observation_space, env_id)
    if obs_map is None:
        return env
    return _wrapper_class()(env, obs_map)


@functools.cache
def _wrapper_class() -> type:
    # Built on first use so that importing flowrl.envs does not import gymnasium.
    import gymnasium

    class MappedObservation(gymnasium.ObservationWrapper):
        """Observations passed through an :class:`ObservationMap` (float32, the model's input size)."""

        def __init__(self, env: gymnasium.Env, obs_map: ObservationMap):
            super().__init__(env)
            self.obs_map = obs_map
            n = check_env_space(obs_map, env.observation_space)
            self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (n,), np.float32)

        def observation(self, observation: Any) -> np.ndarray:
            return self.obs_map.apply(observation).astype(np.float32)

    MappedObservation.__module__ = __name__
    return MappedObservation


# ---------------------------------------------------------------------- small helpers
def _lookup(obs: Mapping[str, Any], path: str) -> Any:
    node: Any = obs
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            have = ", ".join(sorted(node)) if isinstance(node, Mapping) else "a leaf"
            raise InputError(f"observation key {path!r} is missing (at {part!r}: found {have})")
        node = node[part]
    return node


def _ints(values: Any, name: str) -> list[int]:
    arr = np.asarray(values)
    if arr.ndim != 1 and not (arr.ndim == 0 and name == "observation_size"):
        raise InputError(f"{name} must be a list of integers, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size and not (np.issubdtype(arr.dtype, np.integer) or _integral_floats(arr)):
        raise InputError(f"{name} must hold integers, got {arr.dtype} values")
    return [int(v) for v in arr]


def _integral_floats(arr: np.ndarray) -> bool:
    return np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.isfinite(arr) & (arr == np.round(arr))))


def _strs(values: Any, name: str) -> list[str]:
    if isinstance(values, (str, bytes)):
        raise InputError(f"{name} must be a list of strings, got one string")
    out = [
        v.decode() if isinstance(v, bytes) else v for v in (values.tolist() if hasattr(values, "tolist") else values)
    ]
    if not all(isinstance(v, str) for v in out):
        raise InputError(f"{name} must hold strings")
    return out


def _first_repeat(values: tuple) -> Any:
    seen: set = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)
    return None


def _span_text(idx: tuple[int, ...]) -> str:
    """``0,1,2,5`` -> ``"0-2,5"`` (runs of consecutive increasing indices)."""
    runs: list[str] = []
    start = prev = idx[0]
    for i in (*idx[1:], None):
        if i is not None and i == prev + 1:
            prev = i
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(runs)
