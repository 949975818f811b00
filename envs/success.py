"""Episode success from step infos, the way D4RL counts it for each suite.

An :class:`~flowrl.envs.specs.EnvSpec` names its rule (``success``):

- ``"reached"`` (Maze2D, AntMaze): ``info["success"]`` is true at some step of the episode;
- ``"goal_steps"`` (Adroit): ``info["success"]`` (D4RL's ``goal_achieved``) is true at more than
  ``success_steps`` steps (D4RL: 25 for door, hammer and relocate, 20 for pen, out of 200);
- ``"all_tasks"`` (Kitchen): every task of ``tasks_to_complete`` is in ``info["episode_task_completions"]``
  when the episode ends.

:class:`SuccessTracker` follows N environments at once; :func:`evaluate` reports the success of every
episode beside its return, and the success rate (the mean) beside the normalized score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .specs import EnvSpec

__all__ = ["SuccessTracker"]


class SuccessTracker:
    """Success of the running episode in each of ``n`` environments (see the module doc)."""

    def __init__(self, spec: EnvSpec, n: int, env_kwargs: Mapping[str, Any] | None = None):
        self.rule = spec.success
        self.steps = spec.success_steps
        tasks = (env_kwargs or {}).get("tasks_to_complete")
        self.n_tasks = len(tasks) if isinstance(tasks, Sequence) and not isinstance(tasks, str) else None
        if self.rule == "all_tasks" and not self.n_tasks:
            self.rule = None  # a Kitchen without a task list to complete has no success to report
        self.count = np.zeros(n, dtype=np.int64)  # steps with info["success"], or tasks done (all_tasks)

    @property
    def enabled(self) -> bool:
        return self.rule is not None

    def reset(self, mask: np.ndarray) -> None:
        """New episodes start in the environments where ``mask`` (bool [n]) is True."""
        self.count[mask] = 0

    def update(self, j: int, info: Mapping[str, Any]) -> None:
        """Environment ``j`` took a step that returned ``info``."""
        if self.rule in ("reached", "goal_steps"):
            self.count[j] += bool(info.get("success", False))
        elif self.rule == "all_tasks":
            self.count[j] = len(info.get("episode_task_completions", ()))

    def update_vector(self, infos: Mapping[str, Any], stepped: np.ndarray) -> None:
        """All environments took a step (a vector env's ``infos``: arrays with ``_key`` masks); only the
        rows in ``stepped`` (bool [n]) count."""
        for j in np.flatnonzero(stepped):
            row = {k: v[j] for k, v in infos.items() if not k.startswith("_") and infos.get(f"_{k}", stepped)[j]}
            self.update(int(j), row)

    def succeeded(self, j: int) -> bool:
        """Whether environment ``j``'s episode (the one now ending) succeeded."""
        if self.rule == "reached":
            return bool(self.count[j] > 0)
        if self.rule == "goal_steps":
            return bool(self.count[j] > self.steps)
        if self.rule == "all_tasks":
            return bool(self.count[j] >= self.n_tasks)
        return False
