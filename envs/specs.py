"""Environment specs: D4RL names -> gymnasium ids, episode lengths, reference scores, target returns.

``get_spec("hopper")``, ``get_spec("hopper-medium-v2")``, ``get_spec("Hopper-v5")`` and
``get_spec("mujoco/hopper/medium-v0")`` all resolve to the Hopper spec; any other gymnasium id gets a
generic spec (no D4RL reference scores, so no normalized score unless a dataset provides them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np

from flowrl.errors import InputError

__all__ = ["EnvSpec", "SPECS", "get_spec", "normalized_score"]


@dataclass(frozen=True)
class EnvSpec:
    name: str
    """Short name: "hopper", "halfcheetah", ... (or the gymnasium id for generic envs)."""
    gym_id: str
    """Gymnasium id made by ``gymnasium.make`` (MuJoCo v5 by default)."""
    max_episode_steps: int = 1000
    """Episode length limit (time limit) used for rollouts."""
    ref_min_score: float | None = None
    """D4RL random-policy return (normalized score 0)."""
    ref_max_score: float | None = None
    """D4RL expert return (normalized score 100)."""
    target_returns: tuple[float, ...] = ()
    """Default return-to-go targets for Decision Transformer evaluation (high, low)."""
    reward_scale: float = 1e-3
    """Scale applied to returns-to-go before they enter the model."""

    @property
    def has_reference(self) -> bool:
        return self.ref_min_score is not None and self.ref_max_score is not None


# D4RL reference scores (d4rl/infos.py) and Decision Transformer paper targets.
SPECS: dict[str, EnvSpec] = {
    "hopper": EnvSpec("hopper", "Hopper-v5", 1000, -20.272305, 3234.3, (3600.0, 1800.0)),
    "halfcheetah": EnvSpec("halfcheetah", "HalfCheetah-v5", 1000, -280.178953, 12135.0, (12000.0, 6000.0)),
    "walker2d": EnvSpec("walker2d", "Walker2d-v5", 1000, 1.629008, 4592.3, (5000.0, 2500.0)),
    "ant": EnvSpec("ant", "Ant-v5", 1000, -325.6, 3879.7, (6000.0, 3000.0)),
}
_GYM_NAMES = {"hopper": "hopper", "halfcheetah": "halfcheetah", "walker2d": "walker2d", "ant": "ant"}


def get_spec(name: str) -> EnvSpec:
    """Resolve an env or dataset name to its :class:`EnvSpec`.

    Accepts short names ("hopper"), D4RL dataset names ("hopper-medium-replay-v2"), flowrl dataset names
    ("hopper-medium"), Minari ids ("mujoco/hopper/medium-v0") and gymnasium ids ("Hopper-v5", "Hopper-v4").
    Unknown gymnasium-looking ids ("Foo-v1") get a generic spec without reference scores.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"env name must be a non-empty string, got {name!r}")
    key = name.strip()
    if "/" in key:
        # Minari ids are "namespace/env/dataset-vN" ("mujoco/hopper/medium-v0", "flowrl/hopper/medium-v0"):
        # the environment is the second-to-last component.
        key = key.split("/")[-2]
    m = re.fullmatch(r"([A-Za-z0-9]+)-v(\d+)", key)
    if m and m.group(1).lower() in _GYM_NAMES:
        spec = SPECS[_GYM_NAMES[m.group(1).lower()]]
        return spec if key == spec.gym_id else replace(spec, gym_id=f"{spec.gym_id.split('-')[0]}-v{m.group(2)}")
    base = key.lower().split("-")[0]
    if base in SPECS:
        return SPECS[base]
    if m:
        return EnvSpec(name=key, gym_id=key, max_episode_steps=_registry_max_episode_steps(key))
    raise InputError(
        f"unknown environment {name!r}; known: {', '.join(sorted(SPECS))}, or a gymnasium id such as 'Hopper-v5'"
    )


def _registry_max_episode_steps(gym_id: str, default: int = 1000) -> int:
    """The time limit gymnasium registers for ``gym_id`` (``default`` if unregistered or unlimited)."""
    import gymnasium  # lazy: keep ``import flowrl.envs`` light

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
