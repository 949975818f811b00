"""Making environments: :func:`make_env` (a spec's evaluation environment, time limit and observation
map) and :func:`check_compatible` (does a dataset fit an environment?).

gymnasium-robotics ids are registered on demand, and Kitchen gets flowrl's fix
(:mod:`flowrl.envs.robotics`); a spec's settings (a maze's fixed goal, Kitchen's tasks) come from
:meth:`EnvSpec.make_kwargs`, under any keyword arguments the caller gives.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from flowrl.errors import InputError

from .observations import ObservationMap, check_env_space, wrap_env
from .robotics import make_robotics_env, needs_robotics
from .specs import EnvSpec, get_spec

if TYPE_CHECKING:
    from .dataset import TrajectoryDataset

__all__ = ["make_env", "make_rollout_env", "check_compatible", "check_env_id"]


def make_env(
    env: str | EnvSpec,
    *,
    max_episode_steps: int | None = None,
    observation_map: ObservationMap | None = None,
    **kwargs: Any,
):
    """``gymnasium.make`` for an env name / D4RL name / gymnasium id / :class:`EnvSpec`, with the spec's
    time limit unless ``max_episode_steps`` is given and the spec's evaluation settings
    (:meth:`EnvSpec.make_kwargs`) under ``kwargs``. With ``observation_map`` (a dataset's or an agent's
    ``observation_map``), the environment's observations are mapped to what the model sees
    (:func:`flowrl.envs.observations.wrap_env`); without it they are left as the environment gives them."""
    spec = env if isinstance(env, EnvSpec) else get_spec(env)
    limit = max_episode_steps or spec.max_episode_steps
    made = _make(spec.gym_id, max_episode_steps=limit, **{**spec.make_kwargs(), **kwargs})
    if observation_map is None:
        return made
    try:
        return wrap_env(made, observation_map)
    except BaseException:
        made.close()
        raise


def _make(gym_id: str, **kwargs: Any):
    import gymnasium

    _mujoco_warnings_once()
    with _env_errors(gym_id):
        if needs_robotics(gym_id):  # registered on demand; Kitchen with flowrl's fix (see flowrl.envs.robotics)
            return make_robotics_env(gym_id, **kwargs)
        return gymnasium.make(gym_id, **kwargs)


def _mujoco_warnings_once() -> None:
    """Route MuJoCo's warnings through Python's :mod:`warnings` (a ``RuntimeWarning`` naming MuJoCo), so that
    a warning its model compiler gives for every environment made (HalfCheetah-v5's ``settotalmass`` under
    mujoco 4, say) is shown once per process, as Python shows a repeated warning, instead of once per
    environment, and ``-W`` / :func:`warnings.filterwarnings` can silence it. A handler the user installed
    (``mujoco.set_mju_user_warning``) is left in place."""
    try:
        import mujoco
    except ImportError:
        return
    if mujoco.get_mju_user_warning() is None:
        mujoco.set_mju_user_warning(_warn_from_mujoco)


def _warn_from_mujoco(message: str) -> None:
    import sys
    import warnings

    try:
        warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)
    except Exception:  # a filter made it an error: an exception must not cross MuJoCo's C code (it aborts)
        print(f"MuJoCo warning: {message}", file=sys.stderr)


def check_env_id(gym_id: str) -> None:
    """InputError unless gymnasium knows ``gym_id`` (robotics ids registered first): checked in the
    parent process, before rollout workers or vector environments would fail on it."""
    import gymnasium

    from .robotics import ensure_registered

    with _env_errors(gym_id):
        ensure_registered(gym_id)
        gymnasium.spec(gym_id)


@contextlib.contextmanager
def _env_errors(gym_id: str):
    """gymnasium's errors for an id it does not know (or cannot make here) as one-line InputErrors."""
    import gymnasium

    try:
        yield
    except gymnasium.error.Error as e:
        raise InputError(f"cannot make environment {gym_id!r}: {' '.join(str(e).split())}") from None


def make_rollout_env(gym_id: str, obs_map: ObservationMap | None, **kwargs: Any):
    """A rollout environment: made, then wrapped by ``obs_map`` (dict observations without a map are
    refused, see :func:`~flowrl.envs.observations.check_env_space`). Module level, so vector envs can
    pickle it."""
    env = _make(gym_id, **kwargs)
    try:
        return wrap_env(env, obs_map)
    except BaseException:
        env.close()
        raise


def check_compatible(dataset: TrajectoryDataset, env: Any) -> None:
    """Raise ValueError unless the dataset's observation/action sizes match the environment's.

    ``env`` is a name / gymnasium id / :class:`EnvSpec` (made and closed here) or a gymnasium env. The
    dataset's observation map (dict layout, kept dimensions) must fit the environment's observations, and
    what it gives must have the dataset's observation size.
    """
    import gymnasium

    made = None
    if isinstance(env, (str, EnvSpec)):
        made = env = make_env(env)
    source = dataset.metadata.get("source") or "dataset"
    try:
        env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        try:
            obs_size = check_env_space(dataset.observation_map, env.observation_space, env_id)
        except ValueError as e:
            raise InputError(f"{source} does not fit {env_id}: {e}") from None
        act_size = gymnasium.spaces.flatdim(env.action_space)
    finally:
        if made is not None:
            made.close()
    problems = []
    if dataset.obs_dim != obs_size:
        problems.append(f"observations have size {dataset.obs_dim} but {env_id} expects {obs_size}")
    if dataset.act_dim != act_size:
        problems.append(f"actions have size {dataset.act_dim} but {env_id} expects {act_size}")
    if problems:
        raise InputError(f"{source} does not fit {env_id}: " + "; ".join(problems))
