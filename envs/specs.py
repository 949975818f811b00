"""Environment specs: D4RL names -> gymnasium ids, evaluation settings, reference scores, target returns.

Locomotion: ``get_spec("hopper")``, ``get_spec("hopper-medium-v2")``, ``get_spec("Hopper-v5")`` and
``get_spec("mujoco/hopper/medium-v0")`` all resolve to the Hopper spec.

D4RL's other suites, on their gymnasium-robotics successors (``flowrl[robotics]``), one spec per task:

============================  =====================================================================
task                          names that resolve to it
============================  =====================================================================
``pointmaze-umaze`` (medium,  ``maze2d-umaze-v1``, ``D4RL/pointmaze/umaze-v2``, ``pointmaze-umaze``
large)                        (flowrl collect), ``flowrl/pointmaze/umaze-v0``, ``PointMaze_UMaze-v3``
``antmaze-umaze`` (medium,    ``antmaze-umaze-v2``, ``antmaze-umaze-diverse-v2``,
large)                        ``antmaze-medium-play-v2``, ``D4RL/antmaze/umaze-v1``, ``AntMaze_UMaze-v4``
``door`` (hammer, pen,        ``door-human-v1``, ``door-cloned-v1``, ``D4RL/door/human-v2``,
relocate)                     ``AdroitHandDoor-v1``
``kitchen-complete``          ``kitchen-complete-v0``, ``D4RL/kitchen/complete-v2`` (partial, mixed alike)
============================  =====================================================================

A spec fixes the *evaluation* environment as D4RL scored it, so that its reference returns apply:
mazes with one fixed goal cell (Maze2D: continuing for the whole episode, the return counts steps at the
goal; AntMaze: from a fixed start, ending at the goal, return 0 or 1), Kitchen with its four tasks
(reward 1 per task completed, ending when all are done), Adroit with its dense reward. Any other gymnasium
id gets a generic spec (no reference scores, so no normalized score unless a dataset provides them).

flowrl's own memory task ``tmaze`` (:mod:`flowrl.envs.tmaze`, ``flowrl/TMaze-v0``, ``flowrl/tmaze/mixed-v0``)
is registered with gymnasium when its spec is resolved.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from flowrl.errors import InputError

__all__ = ["EnvSpec", "SPECS", "SUCCESS_RULES", "get_spec", "normalized_score", "suite_task", "task_of"]

SUCCESS_RULES = ("reached", "goal_steps", "all_tasks")
"""How an episode's success is read from ``info`` (see :attr:`EnvSpec.success`)."""


@dataclass(frozen=True)
class EnvSpec:
    name: str
    """Short name: "hopper", "pointmaze-umaze", "door", ... (or the gymnasium id for generic envs)."""
    gym_id: str
    """Gymnasium id made by ``gymnasium.make`` (MuJoCo v5 by default)."""
    max_episode_steps: int = 1000
    """Episode length limit (time limit) used for rollouts, as D4RL/Minari set it."""
    ref_min_score: float | None = None
    """D4RL random-policy return (normalized score 0)."""
    ref_max_score: float | None = None
    """D4RL expert return (normalized score 100)."""
    target_returns: tuple[float, ...] = ()
    """Default return-to-go targets for Decision Transformer evaluation (high, low)."""
    reward_scale: float = 1e-3
    """Scale applied to returns-to-go before they enter the model."""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for ``gymnasium.make`` that set up the evaluation environment (tasks, options)."""
    maze: tuple[str, tuple[int, int] | None, tuple[int, int] | None] | None = None
    """Mazes: (gymnasium-robotics map name, goal cell, reset cell) of the evaluation maze; the cells are
    (row, column), None for a random free cell at every reset."""
    success: str | None = None
    """How an episode succeeds: "reached" (``info["success"]`` at some step: mazes), "goal_steps"
    (``info["success"]`` at more than ``success_steps`` steps: Adroit, as D4RL counts it), "all_tasks"
    (every task of ``tasks_to_complete`` done: Kitchen); None when the environment reports none."""
    success_steps: int = 0
    """The "goal_steps" threshold."""
    dataset_goal: str | None = None
    """D4RL HDF5 files of this task: the maze whose goal infos the file must match (see the loaders)."""

    def __post_init__(self) -> None:
        if self.success is not None and self.success not in SUCCESS_RULES:
            raise InputError(f"EnvSpec {self.name}: success must be one of {', '.join(SUCCESS_RULES)}")

    @property
    def has_reference(self) -> bool:
        return self.ref_min_score is not None and self.ref_max_score is not None

    def make_kwargs(self) -> dict[str, Any]:
        """``gymnasium.make`` keyword arguments of the evaluation environment (the maze map built here)."""
        kwargs = dict(self.env_kwargs)
        if self.maze is not None:
            kwargs["maze_map"] = maze_map(*self.maze)
        return kwargs


def maze_map(name: str, goal: tuple[int, int] | None, reset: tuple[int, int] | None) -> list[list]:
    """gymnasium-robotics' map ``name`` (``U_MAZE``, ...) with the goal ("g") and reset ("r") cells set."""
    from .robotics import ensure_registered

    ensure_registered("PointMaze_UMaze-v3")  # imports gymnasium-robotics or names the extra
    from gymnasium_robotics.envs.maze import maps

    rows = [list(r) for r in getattr(maps, name)]
    for cell, mark in ((goal, maps.GOAL), (reset, maps.RESET)):
        if cell is not None:
            r, c = cell
            if rows[r][c] != 0:
                raise InputError(f"maze {name}: cell {cell} is not free")
            rows[r][c] = mark
    return rows


_MAZE_MAPS = {"umaze": "U_MAZE", "medium": "MEDIUM_MAZE", "large": "LARGE_MAZE"}
"""gymnasium-robotics' map of each maze (``gymnasium_robotics.envs.maze.maps``)."""


def _maze2d(maze: str, gym_maze: str, limit: int, lo: float, hi: float, goal: tuple[int, int]) -> EnvSpec:
    # D4RL Maze2D: the goal is fixed, the start is a random free cell, the episode never ends early and
    # the sparse reward counts the steps spent at the goal.
    return EnvSpec(
        f"pointmaze-{maze}",
        f"PointMaze_{gym_maze}-v3",
        limit,
        lo,
        hi,
        (hi, hi / 2),
        reward_scale=1e-2,
        env_kwargs={"continuing_task": True, "reset_target": False},
        maze=(_MAZE_MAPS[maze], goal, None),
        success="reached",
        dataset_goal=maze,
    )


def _antmaze(maze: str, gym_maze: str, limit: int, goal: tuple[int, int], start: tuple[int, int]) -> EnvSpec:
    # D4RL AntMaze: fixed start and goal; the episode ends at the goal with reward 1, so the return is the
    # success (reference scores 0 and 1).
    return EnvSpec(
        f"antmaze-{maze}",
        f"AntMaze_{gym_maze}-v4",
        limit,
        0.0,
        1.0,
        (1.0,),
        reward_scale=1.0,
        env_kwargs={"continuing_task": False, "reset_target": False},
        maze=(_MAZE_MAPS[maze], goal, start),
        success="reached",
        dataset_goal=maze,
    )


def _adroit(task: str, lo: float, hi: float, steps: int) -> EnvSpec:
    gym_id = f"AdroitHand{task.title()}-v1"
    return EnvSpec(task, gym_id, 200, lo, hi, (hi, hi / 2), success="goal_steps", success_steps=steps)


def _kitchen(level: str, tasks: tuple[str, ...], limit: int) -> EnvSpec:
    # D4RL Kitchen: reward 1 for each of the four tasks when completed, the episode ends when all are done.
    kwargs = {"tasks_to_complete": list(tasks), "remove_task_when_completed": True}
    kwargs["terminate_on_tasks_completed"] = True
    name = f"kitchen-{level}"
    return EnvSpec(name, "FrankaKitchen-v1", limit, 0.0, 4.0, (4.0, 3.0), 1.0, kwargs, success="all_tasks")


_KITCHEN_SLIDE = ("microwave", "kettle", "light switch", "slide cabinet")
_KITCHEN_BURNER = ("microwave", "kettle", "bottom burner", "light switch")

# D4RL reference scores (d4rl/infos.py) and target returns: the Decision Transformer paper's for locomotion,
# the expert return and half of it elsewhere (AntMaze: success; Kitchen: all four tasks, three).
SPECS: dict[str, EnvSpec] = {
    "hopper": EnvSpec("hopper", "Hopper-v5", 1000, -20.272305, 3234.3, (3600.0, 1800.0)),
    "halfcheetah": EnvSpec("halfcheetah", "HalfCheetah-v5", 1000, -280.178953, 12135.0, (12000.0, 6000.0)),
    "walker2d": EnvSpec("walker2d", "Walker2d-v5", 1000, 1.629008, 4592.3, (5000.0, 2500.0)),
    "ant": EnvSpec("ant", "Ant-v5", 1000, -325.6, 3879.7, (6000.0, 3000.0)),
    "pointmaze-umaze": _maze2d("umaze", "UMaze", 300, 23.85, 161.86, (1, 1)),
    "pointmaze-medium": _maze2d("medium", "Medium", 600, 13.13, 277.39, (6, 6)),
    "pointmaze-large": _maze2d("large", "Large", 800, 6.7, 273.99, (7, 9)),
    "antmaze-umaze": _antmaze("umaze", "UMaze", 700, (1, 1), (3, 1)),
    "antmaze-medium": _antmaze("medium", "Medium", 1000, (6, 6), (1, 1)),
    "antmaze-large": _antmaze("large", "Large", 1000, (7, 9), (1, 1)),
    "door": _adroit("door", -56.512833, 2880.5693087298737, 25),
    "hammer": _adroit("hammer", -274.856578, 12794.134825156867, 25),
    "pen": _adroit("pen", 96.262799, 3076.8331017826877, 20),
    "relocate": _adroit("relocate", -6.425911, 4233.877797728884, 25),
    "kitchen-complete": _kitchen("complete", _KITCHEN_SLIDE, 280),
    "kitchen-partial": _kitchen("partial", _KITCHEN_SLIDE, 450),
    "kitchen-mixed": _kitchen("mixed", _KITCHEN_BURNER, 450),
    # flowrl's memory task (flowrl.envs.tmaze): return 1 at the cued arm, so normalized = success rate in %
    "tmaze": EnvSpec("tmaze", "flowrl/TMaze-v0", 500, 0.0, 1.0, (1.0,), 1.0),
}
# environments flowrl defines itself: registered with gymnasium when their spec is resolved
_OWN_MODULES = {"tmaze": "flowrl.envs.tmaze"}
_GYM_NAMES = {"hopper": "hopper", "halfcheetah": "halfcheetah", "walker2d": "walker2d", "ant": "ant"}
_MAZES = ("umaze", "medium", "large")
_ADROIT = ("door", "hammer", "pen", "relocate")
_DENSE_MAZE = re.compile(r"(?i)(^maze2d-|^pointmaze-|pointmaze/)[\w-]*dense")
_GYM_SUITE = re.compile(r"(?P<kind>PointMaze|AntMaze)_(?P<maze>UMaze|Medium|Large)(?:_Diverse_GR?)?-v(?P<v>\d+)")
_GYM_ADROIT = re.compile(r"AdroitHand(?P<task>Door|Hammer|Pen|Relocate)-v(?P<v>\d+)")


def task_of(name: str) -> str | None:
    """The task (a key of :data:`SPECS`) a dataset or env name refers to, or None.

    ``"maze2d-medium-v1"`` -> ``"pointmaze-medium"``, ``"antmaze-large-play-v2"`` -> ``"antmaze-large"``,
    ``"D4RL/door/human-v2"`` -> ``"door"``, ``"kitchen-mixed-v0"`` -> ``"kitchen-mixed"``,
    ``"flowrl/pointmaze/umaze-v0"`` -> ``"pointmaze-umaze"``, ``"hopper-medium-v2"`` -> ``"hopper"``.
    """
    key = name.strip()
    if "/" in key:
        # Minari ids are "namespace/env/dataset-vN": the env, and for mazes and Kitchen the dataset's first
        # word (the maze or the task set).
        parts = key.split("/")
        if len(parts) < 2:
            return None
        env, dataset = parts[-2].lower(), re.sub(r"-v\d+$", "", parts[-1]).lower()
        words = [env, *dataset.split("-")]
    else:
        words = re.sub(r"-v\d+$", "", key).lower().split("-")
    if words[0] == "maze2d":
        words[0] = "pointmaze"
    if words[0] == "pointmaze" and "dense" in words:
        return None  # dense rewards: another task with other reference scores (see get_spec)
    if words[0] in ("pointmaze", "antmaze") and len(words) > 1 and words[1] in _MAZES:
        return f"{words[0]}-{words[1]}"
    if words[0] == "kitchen" and len(words) > 1 and f"kitchen-{words[1]}" in SPECS:
        return f"kitchen-{words[1]}"
    if words[0] in SPECS and words[0] not in ("pointmaze", "antmaze", "kitchen"):
        return words[0]
    return None


def suite_task(name: str) -> str | None:
    """Like :func:`task_of` (gymnasium ids included), for the goal and manipulation suites only: None for
    locomotion and unknown names."""
    try:
        task = get_spec(name).name if _GYM_SUITE.fullmatch(name) or _GYM_ADROIT.fullmatch(name) else task_of(name)
    except InputError:
        return None
    return None if task is None or task in _GYM_NAMES else task


def get_spec(name: str) -> EnvSpec:
    """Resolve an env or dataset name to its :class:`EnvSpec`.

    Accepts short names ("hopper", "pointmaze-umaze"), D4RL dataset names ("hopper-medium-replay-v2",
    "maze2d-umaze-v1", "door-human-v1"), flowrl dataset names ("hopper-medium"), Minari ids
    ("mujoco/hopper/medium-v0", "D4RL/kitchen/mixed-v2") and gymnasium ids ("Hopper-v5", "AntMaze_UMaze-v4").
    Unknown gymnasium-looking ids ("Foo-v1", "FrankaKitchen-v1", whose tasks a spec must name) get a
    generic spec without reference scores.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"env name must be a non-empty string, got {name!r}")
    spec = _resolve(name)
    if spec.name in _OWN_MODULES:
        import importlib

        importlib.import_module(_OWN_MODULES[spec.name])  # registers its gymnasium id
    return spec


def _resolve(name: str) -> EnvSpec:
    key = name.strip()
    exact = [SPECS[n] for n in _OWN_MODULES if SPECS[n].gym_id == key]  # "flowrl/TMaze-v0"
    if exact:
        return exact[0]
    m = re.fullmatch(r"([A-Za-z0-9]+)-v(\d+)", key)
    if m and m.group(1).lower() in _GYM_NAMES:
        spec = SPECS[_GYM_NAMES[m.group(1).lower()]]
        return spec if key == spec.gym_id else replace(spec, gym_id=f"{spec.gym_id.split('-')[0]}-v{m.group(2)}")
    suite = _GYM_SUITE.fullmatch(key) or _GYM_ADROIT.fullmatch(key)
    if suite is not None:
        groups = suite.groupdict()
        task = groups["task"].lower() if "task" in groups else f"{groups['kind'].lower()}-{groups['maze'].lower()}"
        return replace(SPECS[task], gym_id=key)
    task = task_of(key)
    if task is not None:
        return SPECS[task]
    if _DENSE_MAZE.search(key):
        raise InputError(
            f"{name!r} is a dense-reward maze; flowrl scores the sparse ones (maze2d-umaze-v1, "
            "D4RL/pointmaze/umaze-v2, ...): the dense reward and its D4RL reference scores differ"
        )
    if re.fullmatch(r"[A-Za-z][\w:.]*-v\d+", key):
        return EnvSpec(name=key, gym_id=key, max_episode_steps=_registry_max_episode_steps(key))
    raise InputError(
        f"unknown environment {name!r}; known: {', '.join(sorted(SPECS))}, D4RL or Minari dataset names of these, "
        "or a gymnasium id such as 'Hopper-v5'"
    )


def _registry_max_episode_steps(gym_id: str, default: int = 1000) -> int:
    """The time limit gymnasium registers for ``gym_id`` (``default`` if unregistered or unlimited)."""
    import gymnasium  # lazy: keep ``import flowrl.envs`` light

    from .robotics import ensure_registered

    ensure_registered(gym_id)
    registered = gymnasium.envs.registration.registry.get(gym_id)
    if registered is None or registered.max_episode_steps is None:
        return default
    return int(registered.max_episode_steps)


def normalized_score(env: str | EnvSpec, returns, *, ref_min: float | None = None, ref_max: float | None = None):
    """D4RL-normalized score 100·(R − min)/(max − min), elementwise over ``returns``.

    ``ref_min``/``ref_max`` override the spec's constants (e.g. from a dataset's metadata).
    Raises ValueError when neither the spec nor the arguments give reference scores.
    """
    spec = env if isinstance(env, EnvSpec) else get_spec(env)
    lo = spec.ref_min_score if ref_min is None else ref_min
    hi = spec.ref_max_score if ref_max is None else ref_max
    if lo is None or hi is None:
        raise InputError(f"no reference scores for {spec.name!r}: pass ref_min and ref_max to normalize")
    if hi == lo:
        raise InputError(f"reference scores for {spec.name!r} are equal ({lo}); cannot normalize")
    out = 100.0 * (np.asarray(returns, dtype=np.float64) - lo) / (hi - lo)
    return float(out) if out.ndim == 0 else out
