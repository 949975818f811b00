"""Maze datasets the way D4RL made Maze2D: ``flowrl collect pointmaze-umaze`` (medium, large).

D4RL's Maze2D data come from a scripted point mass: a planner over the maze grid picks a random goal,
walks the shortest path there cell by cell, and a PD controller steers toward the next waypoint, with
Gaussian noise on every action; when the goal is reached a new one is drawn. This module does the same in
gymnasium-robotics' PointMaze:

- **Planner**: a breadth-first distance field over the free cells from the goal cell; in any cell the next
  waypoint is the centre of the neighbouring cell one step closer (in the goal's cell: the goal itself).
- **Controller**: ``a = clip(kp·(waypoint − xy) − kd·velocity + N(0, noise²), −1, 1)`` with D4RL's gains
  (kp 10, kd 1) and noise (0.5).
- **Goals**: a random free cell's centre plus uniform jitter (±0.1 of a cell), redrawn when the point is
  within ``reach`` of it.

The episodes are recorded in the *evaluation* environment of the task's spec (:mod:`flowrl.envs.specs`):
the maze's fixed goal cell, random starts, the D4RL time limit (300/600/800 steps), continuing after the
goal is reached. So the rewards are D4RL's (sparse, for the evaluation goal, summed over the episode), the
returns compare directly with evaluation returns and the D4RL reference scores, and the observations are
the environment's own dict (``observation``, ``achieved_goal``, ``desired_goal`` = the evaluation goal).
The behaviour's own goal at each observation is kept in the episode infos (``behavior_goal``).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowrl.errors import InputError, OutputExistsError

__all__ = ["MazeCollectConfig", "MAZE_TASKS", "MAZE_TRANSITIONS", "collect_maze", "MazePlanner"]

MAZE_TASKS = ("pointmaze-umaze", "pointmaze-medium", "pointmaze-large")
"""The tasks this recipe makes (``flowrl collect TASK``)."""
MAZE_TRANSITIONS = {"pointmaze-umaze": 1_000_000, "pointmaze-medium": 2_000_000, "pointmaze-large": 4_000_000}
"""D4RL's Maze2D dataset sizes, the default ``transitions``."""


@dataclass
class MazeCollectConfig:
    """One maze dataset: which maze, how much data and the behaviour's noise."""

    task: str = "pointmaze-umaze"
    """``pointmaze-umaze``, ``pointmaze-medium`` or ``pointmaze-large``."""
    transitions: int | None = None
    """Steps to record, rounded up to whole episodes (default: D4RL's size, 1M / 2M / 4M)."""
    noise: float = 0.5
    """Standard deviation of the Gaussian noise added to every action (D4RL: 0.5)."""
    kp: float = 10.0
    """Proportional gain toward the waypoint."""
    kd: float = 1.0
    """Damping on the velocity."""
    reach: float = 0.1
    """A goal counts as reached within this distance (maze units); a new goal is drawn then."""
    seed: int = 0
    """Episode i resets with seed + i; the behaviour's goals and noise come from a generator seeded with it."""
    dataset_id: str | None = None
    """Minari id to write (default ``flowrl/pointmaze/<maze>-v0``)."""

    def __post_init__(self) -> None:
        if self.task not in MAZE_TASKS:
            raise InputError(f"unknown maze task {self.task!r}; choose one of {', '.join(MAZE_TASKS)}")
        if self.transitions is not None and self.transitions < 1:
            raise InputError(f"transitions must be >= 1, got {self.transitions}")
        if not (self.noise >= 0 and self.kp > 0 and self.kd >= 0 and self.reach > 0):
            raise InputError("noise and kd must be >= 0, kp and reach > 0")
        if self.dataset_id is not None and not re.fullmatch(r"[-\w]+(?:/[-\w]+)*-v\d+", self.dataset_id):
            raise InputError(f"malformed Minari dataset id {self.dataset_id!r}: expected 'namespace/env/name-vN'")

    @property
    def steps(self) -> int:
        return MAZE_TRANSITIONS[self.task] if self.transitions is None else self.transitions

    @property
    def target_id(self) -> str:
        return self.dataset_id or f"flowrl/pointmaze/{self.task.split('-', 1)[1]}-v0"


class MazePlanner:
    """Waypoints on a maze grid: ``next_cell[goal][cell]`` is the neighbour of ``cell`` one step closer to
    ``goal`` (breadth-first distances over the free cells, 4-connected)."""

    def __init__(self, maze_map: list[list[Any]]):
        self.free = [(r, c) for r, row in enumerate(maze_map) for c, v in enumerate(row) if v != 1]
        free = set(self.free)
        self._next: dict[tuple[int, int], dict[tuple[int, int], tuple[int, int]]] = {}
        for goal in self.free:
            step: dict[tuple[int, int], tuple[int, int]] = {goal: goal}
            queue = deque([goal])
            while queue:  # breadth first from the goal: a cell's parent is its next waypoint
                cell = queue.popleft()
                r, c = cell
                for n in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if n in free and n not in step:
                        step[n] = cell
                        queue.append(n)
            self._next[goal] = step

    def next_cell(self, goal: tuple[int, int], cell: tuple[int, int]) -> tuple[int, int]:
        """The next cell on a shortest path from ``cell`` to ``goal`` (``goal`` itself when there)."""
        return self._next[goal].get(cell, goal)


def collect_maze(cfg: MazeCollectConfig, *, progress: bool = True, overwrite: bool = False, command: str | None = None):
    """Record ``cfg.steps`` transitions (whole episodes) and write them as a local Minari dataset with dict
    observations; returns a summary dict (dataset id, transitions, episodes, mean return, seconds)."""
    from flowrl.envs.environment import make_env
    from flowrl.envs.minari_io import minari_root, write_minari_episodes
    from flowrl.envs.specs import get_spec
    from tqdm.auto import tqdm

    target = minari_root() / cfg.target_id
    if target.exists() and not overwrite:  # refuse before minutes of collection, not after
        raise OutputExistsError(
            f"Minari dataset {cfg.target_id!r} already exists at {target} (pass --overwrite to replace it)"
        )
    spec = get_spec(cfg.task)
    env = make_env(spec)
    maze = env.unwrapped.maze
    planner = MazePlanner(maze.maze_map)
    rng = np.random.default_rng(cfg.seed)
    limit = spec.max_episode_steps
    n_episodes = -(-cfg.steps // limit)
    episodes: list[Mapping[str, Any]] = []
    returns: list[float] = []
    t0 = time.perf_counter()
    try:
        with tqdm(total=n_episodes * limit, desc=f"collect {cfg.task}", unit="step", disable=not progress) as bar:
            for i in range(n_episodes):
                episode = _episode(env, maze, planner, cfg, rng, cfg.seed + i, limit)
                episodes.append(episode)
                returns.append(float(episode["rewards"].sum()))
                bar.update(limit)
    finally:
        env.close()
    seconds = time.perf_counter() - t0
    metadata = {
        "ref_min_score": spec.ref_min_score,
        "ref_max_score": spec.ref_max_score,
        "algorithm_name": "waypoint planner + PD controller (D4RL Maze2D recipe)",
        "description": (
            f"flowrl {cfg.task}: D4RL's Maze2D recipe in {spec.gym_id} (fixed evaluation goal, random starts, "
            f"{limit}-step episodes)"
        ),
        "collect_config": dataclasses.asdict(cfg),
        "collect_seconds": round(seconds, 1),
    }
    if command:
        metadata["command"] = command
    path = write_minari_episodes(cfg.target_id, episodes, env_spec=env.spec, metadata=metadata, overwrite=overwrite)
    return {
        "dataset_id": cfg.target_id,
        "path": str(Path(path)),
        "transitions": n_episodes * limit,
        "episodes": n_episodes,
        "mean_return": float(np.mean(returns)),
        "seconds": seconds,
    }


def _episode(env, maze, planner: MazePlanner, cfg: MazeCollectConfig, rng, seed: int, limit: int) -> dict:
    """One episode of the behaviour: observations as a dict of [T+1, ...] arrays, the rest [T]."""
    obs, _ = env.reset(seed=seed)
    scale = maze.maze_size_scaling
    goal_cell, target = _draw_goal(planner, maze, rng)
    keys = ("achieved_goal", "desired_goal", "observation")
    seen = {k: [obs[k]] for k in keys}
    actions = np.empty((limit, 2), np.float32)
    rewards = np.empty(limit, np.float64)
    terms = np.zeros(limit, bool)
    truncs = np.zeros(limit, bool)
    goals = []  # the behaviour's goal when each observation was made (T + 1 rows, as Minari records infos)
    for t in range(limit):
        xy, vel = obs["achieved_goal"], obs["observation"][2:4]
        if np.linalg.norm(target - xy) <= cfg.reach * scale:
            goal_cell, target = _draw_goal(planner, maze, rng)
        row, col = (int(v) for v in maze.cell_xy_to_rowcol(xy))
        cell = (row, col)
        nxt = planner.next_cell(goal_cell, cell)
        waypoint = target if nxt == goal_cell and cell == goal_cell else maze.cell_rowcol_to_xy(np.array(nxt))
        action = cfg.kp * (waypoint - xy) - cfg.kd * vel + cfg.noise * rng.standard_normal(2)
        actions[t] = np.clip(action, -1.0, 1.0)
        goals.append(target)
        obs, rewards[t], terms[t], truncs[t], _ = env.step(actions[t])
        for k in keys:
            seen[k].append(obs[k])
        if terms[t] or truncs[t]:
            break
    n = t + 1
    truncs[n - 1] = not terms[n - 1]
    goals.append(target)
    return {
        "observations": {k: np.asarray(v) for k, v in seen.items()},
        "actions": actions[:n],
        "rewards": rewards[:n],
        "terminations": terms[:n],
        "truncations": truncs[:n],
        "infos": {"behavior_goal": np.asarray(goals)},
        "seed": seed,
    }


def _draw_goal(planner: MazePlanner, maze, rng) -> tuple[tuple[int, int], np.ndarray]:
    """A random free cell and a point near its centre (D4RL: ±0.1 of a cell)."""
    cell = planner.free[int(rng.integers(len(planner.free)))]
    jitter = rng.uniform(-0.1, 0.1, 2) * maze.maze_size_scaling
    return cell, maze.cell_rowcol_to_xy(np.array(cell)) + jitter
