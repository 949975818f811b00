"""D4RL's HDF5 files of the goal and manipulation suites, read into gymnasium-robotics' layout.

D4RL recorded these suites in its own environments; flowrl evaluates them in gymnasium-robotics'. The
files keep D4RL's keys (``observations``, ``actions``, ``rewards``, ``terminals``, ``timeouts``,
``infos/*``); what differs per suite:

- **Maze2D** (``maze2d-umaze-v1`` ...): observations ``[x, y, vx, vy]`` in D4RL's maze frame (x along
  the maze rows, y along the columns, cell (i, j) centred at (i, j)), the behaviour's current goal in
  ``infos/goal``, rewards (sparse) for the maze's fixed evaluation goal, and no episode flags (one
  continuous trajectory; the goal switches when reached). gymnasium-robotics' PointMaze puts cell (i, j)
  at x = j + 0.5 − W/2, y = H/2 − 0.5 − i: a quarter turn and a shift. The reader turns positions,
  velocities, goals and actions (forces along the axes) into that frame, checks that every position and
  goal lies in a free cell of the named maze (a file of another maze fails there), ends an episode
  where the behaviour's goal changes (as D4RL generated them), and builds PointMaze's dict observation:
  ``achieved_goal`` (x, y), ``desired_goal`` (the evaluation goal cell's centre, which the rewards are
  for) and ``observation`` (x, y, vx, vy).
- **AntMaze** (``antmaze-umaze-v2`` ...): observations are the ant's qpos[:15] and qvel[:14] with the
  maze-frame position first, the behaviour's goal in ``infos/goal``. D4RL's ant mazes lie mirrored
  (y along the rows) relative to gymnasium-robotics' (y against the rows), and a mirrored ant is not a
  rotated one (legs swap sides), so these files are read in D4RL's frame with AntMaze's dict keys
  (``achieved_goal`` = position, ``desired_goal`` = ``infos/goal``, ``observation`` = the rest), marked
  ``maze_frame: d4rl``, and refused for evaluation in gymnasium-robotics (train on them, or evaluate
  agents trained on Minari's ``D4RL/antmaze`` datasets, which were recorded in gymnasium-robotics).
- **Kitchen** (``kitchen-mixed-v0`` ...): observations are 9 robot joint positions, 21 object positions
  and a 30-value goal vector. FrankaKitchen-v1's ``observation`` is robot positions (9), robot velocities
  (9), object positions (21), object velocities (20): the file's first 30 columns are its dimensions
  0–8 and 18–38, recorded as ``observation_indices`` (the goal vector, constant for a task set, is
  dropped).
- **Adroit** (``door-human-v1`` ...): the same flat observation as AdroitHand*-v1; each task's
  ``infos/*`` keys (door: ``door_body_pos``, hammer: ``board_pos``, pen: ``desired_orien``, relocate:
  ``obj_pos``) are checked so that a file of another task fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flowrl.errors import InputError

from .observations import ObservationMap
from .specs import SPECS, maze_map, suite_task

__all__ = ["D4RL_FILES", "MINARI_IDS", "d4rl_suite_file", "d4rl_name_of_file", "known_names", "to_suite_layout"]


def _files() -> dict[str, tuple[str, str]]:
    files = {}
    for maze in ("umaze", "medium", "large"):
        files[f"maze2d-{maze}-v1"] = ("maze2d", f"maze2d-{maze}-sparse-v1.hdf5")
    ant = {"umaze": "u-maze", "medium": "big-maze", "large": "hardest-maze"}
    for name, (maze, multi) in {
        "antmaze-umaze": ("umaze", "False_multigoal_False"),
        "antmaze-umaze-diverse": ("umaze", "True_multigoal_True"),
        "antmaze-medium-play": ("medium", "True_multigoal_False"),
        "antmaze-medium-diverse": ("medium", "True_multigoal_True"),
        "antmaze-large-play": ("large", "True_multigoal_False"),
        "antmaze-large-diverse": ("large", "True_multigoal_True"),
    }.items():
        files[f"{name}-v2"] = ("ant_maze_v2", f"Ant_maze_{ant[maze]}_noisy_multistart_{multi}_sparse_fixed.hdf5")
    for task in ("door", "hammer", "pen", "relocate"):
        for level in ("human", "cloned", "expert"):
            files[f"{task}-{level}-v1"] = ("hand_dapg_v1", f"{task}-{level}-v1.hdf5")
    files["kitchen-complete-v0"] = ("kitchen", "mini_kitchen_microwave_kettle_light_slider-v0.hdf5")
    files["kitchen-partial-v0"] = ("kitchen", "kitchen_microwave_kettle_light_slider-v0.hdf5")
    files["kitchen-mixed-v0"] = ("kitchen", "kitchen_microwave_kettle_bottomburner_light-v0.hdf5")
    return files


D4RL_FILES: dict[str, tuple[str, str]] = _files()
"""D4RL name -> (folder on D4RL's server, file name) for the suites' datasets (d4rl/infos.py)."""
MINARI_IDS: tuple[str, ...] = (
    *(f"D4RL/pointmaze/{m}-v2" for m in ("umaze", "medium", "large")),
    *(f"D4RL/antmaze/{d}-v1" for d in ("umaze", "umaze-diverse", "medium-play", "medium-diverse")),
    *(f"D4RL/antmaze/{d}-v1" for d in ("large-play", "large-diverse")),
    *(f"D4RL/{t}/{lvl}-v2" for t in ("door", "hammer", "pen", "relocate") for lvl in ("human", "cloned", "expert")),
    *(f"D4RL/kitchen/{lvl}-v2" for lvl in ("complete", "partial", "mixed")),
)
"""Minari's ids of the suites' D4RL datasets (the sparse mazes: the dense ones score differently)."""
_ADROIT_INFOS = {"door": "door_body_pos", "hammer": "board_pos", "pen": "desired_orien", "relocate": "obj_pos"}
_KITCHEN_KEEP = (*range(9), *range(18, 39))  # FrankaKitchen-v1 observation: robot qpos, object qpos


def d4rl_suite_file(name: str) -> tuple[str, str] | None:
    """(server folder, file name) of a suite's D4RL name, or None for other names."""
    return D4RL_FILES.get(name)


def d4rl_name_of_file(filename: str) -> str | None:
    """The D4RL name of a suite file name (``maze2d-umaze-sparse-v1.hdf5`` -> ``maze2d-umaze-v1``)."""
    for name, (_, file) in D4RL_FILES.items():
        if file == filename:
            return name
    return None


def known_names() -> list[tuple[str, str]]:
    """(name, kind) of every suite dataset name flowrl resolves: D4RL names ("d4rl") and Minari ids ("minari")."""
    return [(n, "d4rl") for n in D4RL_FILES] + [(n, "minari") for n in MINARI_IDS]


def to_suite_layout(
    name: str | None, f: Any, arrays: dict[str, np.ndarray], path: Path
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and metadata of a suite file in gymnasium-robotics' layout (see the module doc).

    ``name`` is the D4RL name the file was asked for (or found under); ``f`` the open h5py file. Returns
    the (possibly converted) arrays and metadata entries to add; files of other suites come back unchanged.
    """
    task = suite_task(name) if name else None
    if task is None:
        return arrays, {}
    meta: dict[str, Any] = {"dataset_name": name, "env_name": task}
    if task.startswith("antmaze-"):
        del meta["env_name"]  # D4RL's mirrored frame: no gymnasium-robotics environment to evaluate in
    if task.startswith("pointmaze-"):
        arrays, extra = _maze2d(task, f, arrays, path)
    elif task.startswith("antmaze-"):
        arrays, extra = _antmaze(task, f, arrays, path)
    elif task.startswith("kitchen-"):
        arrays, extra = _kitchen(arrays, path)
    else:
        arrays, extra = _adroit(task, f, arrays, path)
    return arrays, {**meta, **extra}


# ---------------------------------------------------------------------- Maze2D
def _maze2d(task: str, f: Any, arrays: dict[str, np.ndarray], path: Path):
    obs = np.asarray(arrays["observations"], dtype=np.float64)
    if obs.ndim != 2 or obs.shape[1] != 4:
        raise InputError(f"{path}: a Maze2D file has observations [N, 4] (x, y, vx, vy), got shape {obs.shape}")
    maze = SPECS[task].maze
    assert maze is not None and maze[1] is not None, f"{task}: a Maze2D spec names its maze and goal cell"
    maze_name, goal_cell = maze[0], maze[1]
    rows = maze_map(maze_name, None, None)
    to_xy = _maze2d_frame(rows)
    pos, vel = to_xy(obs[:, :2]), _quarter_turn(obs[:, 2:4])
    _check_in_maze(pos, rows, task, path, "positions")
    goals = _infos(f, "infos/goal")
    flags = np.asarray(arrays["terminals"], bool) | np.asarray(arrays["timeouts"], bool)
    if goals is not None:
        goals = to_xy(np.asarray(goals, dtype=np.float64).reshape(len(obs), 2))
        _check_in_maze(goals, rows, task, path, "infos/goal")
        # D4RL drew a new goal when the old one was reached: the behaviour's segments end there
        flags[:-1] |= np.any(goals[1:] != goals[:-1], axis=1)
    centre = np.array([goal_cell[1] + 0.5 - len(rows[0]) / 2, len(rows) / 2 - 0.5 - goal_cell[0]])
    desired = np.broadcast_to(centre, pos.shape)
    out = dict(arrays)
    out["observations"] = np.concatenate([pos, desired, pos, vel], axis=1).astype(np.float32)
    out["actions"] = _quarter_turn(np.asarray(arrays["actions"], dtype=np.float64)).astype(np.float32)
    out["terminals"] = np.zeros(len(obs), bool)  # reaching a goal never ends a Maze2D episode
    out["timeouts"] = flags
    obs_map = ObservationMap(keys=("achieved_goal", "desired_goal", "observation"), key_sizes=(2, 2, 4))
    return out, {**obs_map.to_metadata(), "maze_frame": "gymnasium-robotics (converted from D4RL's Maze2D frame)"}


def _maze2d_frame(rows: list[list[Any]]):
    """D4RL Maze2D (x = row, y = column) -> gymnasium-robotics PointMaze coordinates."""
    h, w = len(rows), len(rows[0])

    def convert(xy: np.ndarray) -> np.ndarray:
        return np.stack([xy[:, 1] + 0.5 - w / 2, h / 2 - 0.5 - xy[:, 0]], axis=1)

    return convert


def _quarter_turn(v: np.ndarray) -> np.ndarray:
    """Velocities and forces along D4RL's (x, y) axes in gymnasium-robotics' axes: (vy, −vx)."""
    return np.stack([v[:, 1], -v[:, 0]], axis=1)


def _check_in_maze(xy: np.ndarray, rows: list[list[Any]], task: str, path: Path, what: str) -> None:
    h, w = len(rows), len(rows[0])
    i = np.floor(h / 2 - xy[:, 1]).astype(np.int64)
    j = np.floor(xy[:, 0] + w / 2).astype(np.int64)
    inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
    free = np.array([[v != 1 for v in row] for row in rows])
    ok = inside.copy()
    ok[inside] = free[i[inside], j[inside]]
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise InputError(
            f"{path}: {what} leave the free cells of {task}'s maze ({int((~ok).sum())} rows, first at row {bad}); "
            "the file is of another maze"
        )


# ---------------------------------------------------------------------- AntMaze, Kitchen, Adroit
def _antmaze(task: str, f: Any, arrays: dict[str, np.ndarray], path: Path):
    obs = np.asarray(arrays["observations"], dtype=np.float32)
    if obs.ndim != 2 or obs.shape[1] != 29:
        raise InputError(f"{path}: an AntMaze file has observations [N, 29] (qpos[:15], qvel[:14]), got {obs.shape}")
    goals = _infos(f, "infos/goal")
    if goals is None:
        raise InputError(f"{path}: an AntMaze file needs infos/goal (the goal of every step)")
    goals = np.asarray(goals, dtype=np.float32).reshape(len(obs), 2)
    out = dict(arrays)
    out["observations"] = np.concatenate([obs[:, :2], goals, obs[:, 2:]], axis=1)
    obs_map = ObservationMap(keys=("achieved_goal", "desired_goal", "observation"), key_sizes=(2, 2, 27))
    return out, {**obs_map.to_metadata(), "maze_frame": "d4rl"}


def _kitchen(arrays: dict[str, np.ndarray], path: Path):
    obs = np.asarray(arrays["observations"])
    if obs.ndim != 2 or obs.shape[1] != 60:
        raise InputError(f"{path}: a D4RL Kitchen file has observations [N, 60], got shape {obs.shape}")
    out = dict(arrays)
    out["observations"] = obs[:, :30]
    obs_map = ObservationMap(keys=("observation",), key_sizes=(59,), indices=_KITCHEN_KEEP)
    return out, obs_map.to_metadata()


def _adroit(task: str, f: Any, arrays: dict[str, np.ndarray], path: Path):
    theirs = [t for t, key in _ADROIT_INFOS.items() if f"infos/{key}" in f]
    if theirs and task not in theirs:
        raise InputError(f"{path}: this is a D4RL {theirs[0]} file (infos/{_ADROIT_INFOS[theirs[0]]}), not {task}")
    return arrays, {}


def _infos(f: Any, key: str) -> np.ndarray | None:
    node = f.get(key)
    return None if node is None else node[()]
