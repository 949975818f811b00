"""gymnasium-robotics environments (D4RL's mazes, Adroit and Kitchen successors) for flowrl.

- :func:`needs_robotics` / :func:`ensure_registered`: gymnasium-robotics registers its environments only
  when imported; flowrl imports it when an id needs it, and says which extra to install when it is missing.
- :func:`make_robotics_env`: ``gymnasium.make`` for those ids, with ``FrankaKitchen-v1`` built from
  :class:`KitchenEnv` below.

Why Kitchen needs a fix: gymnasium-robotics 1.4.2 reads the robot's joints with
``mujoco_utils.get_joint_qpos``/``get_joint_qvel``, which assert ``joint_type in (mjJNT_HINGE,
mjJNT_SLIDE)``. ``joint_type`` is a numpy int from ``model.jnt_type``; ``x in tuple`` compares
``enum == x``, and mujoco's enums (from 3.3 on; 4.0.0 here) compare equal only to Python ints, so every
hinge joint fails the assertion and ``FrankaKitchen-v1`` cannot even be made (mujoco 3.2.7's enums
compared equal to numpy ints). :class:`KitchenEnv` is the library's class with its robot reading those
joints by address (all nine robot joints are hinges or slides: one qpos and one qvel each), drawing the
observation noise exactly as the library does. The library is not modified; every other environment
runs unchanged. See ``docs/d4rl-suites.md`` for the version choice.
"""

from __future__ import annotations

import contextlib
import functools
import io
from typing import Any

import numpy as np

from flowrl.errors import InputError

__all__ = ["ROBOTICS_PREFIXES", "needs_robotics", "ensure_registered", "make_robotics_env", "MISSING_EXTRA"]

ROBOTICS_PREFIXES = ("PointMaze_", "AntMaze_", "AdroitHand", "FrankaKitchen")
"""Gymnasium ids that gymnasium-robotics registers (the D4RL suites flowrl supports)."""
MISSING_EXTRA = "gymnasium-robotics is not installed; install flowrl's robotics extra: pip install 'flowrl[robotics]'"
_KITCHEN_IDS = ("FrankaKitchen-v1",)


def needs_robotics(gym_id: str) -> bool:
    """Whether ``gym_id`` is one of gymnasium-robotics' D4RL-suite environments."""
    return isinstance(gym_id, str) and gym_id.startswith(ROBOTICS_PREFIXES)


def ensure_registered(gym_id: str) -> None:
    """Register gymnasium-robotics' environments if ``gym_id`` needs them and they are not registered yet.

    Raises ValueError naming the extra to install when gymnasium-robotics is missing."""
    import gymnasium

    if not needs_robotics(gym_id) or gym_id in gymnasium.registry:
        return
    _register_all()


@functools.cache
def _register_all() -> None:
    import gymnasium

    # gymnasium-robotics 1.4.2 prints a notice on import that the dense Adroit rewards changed in 1.2.1
    # (a sign fix that restored D4RL's reward); flowrl's docs say which versions it uses, so the notice
    # is kept out of every command's and every evaluation worker's output.
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            import gymnasium_robotics
    except ImportError:
        raise InputError(MISSING_EXTRA) from None
    gymnasium.register_envs(gymnasium_robotics)


def make_robotics_env(gym_id: str, **kwargs: Any):
    """``gymnasium.make(gym_id, **kwargs)`` for a gymnasium-robotics id (registered on demand); Kitchen is
    made from :class:`KitchenEnv` under its own id, time limit and default arguments."""
    import gymnasium

    ensure_registered(gym_id)
    if gym_id in _KITCHEN_IDS:
        from dataclasses import replace

        spec = replace(gymnasium.spec(gym_id), entry_point=f"{__name__}:KitchenEnv")
        return gymnasium.make(spec, **kwargs)
    return gymnasium.make(gym_id, **kwargs)


def __getattr__(name: str):  # KitchenEnv is built on first use: importing this module stays cheap
    if name == "KitchenEnv":
        return _kitchen_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _kitchen_class() -> type:
    try:
        from gymnasium_robotics.envs.franka_kitchen.franka_env import FrankaRobot
        from gymnasium_robotics.envs.franka_kitchen.kitchen_env import KitchenEnv as LibraryKitchenEnv
    except ImportError:
        raise InputError(MISSING_EXTRA) from None

    class RobotByAddress(FrankaRobot):
        """The library's Franka robot, reading its joints by address (see the module doc)."""

        def _get_obs(self) -> np.ndarray:
            ids = _robot_joints(self)
            qpos = self.data.qpos[self.model.jnt_qposadr[ids]].astype(np.float64)
            qvel = self.data.qvel[self.model.jnt_dofadr[ids]].astype(np.float64)
            # the library's observation noise: positions first, then velocities, from the env's generator
            noise = self.robot_noise_ratio
            qpos += noise * self.robot_pos_noise_amp[:9] * self.np_random.uniform(-1.0, 1.0, qpos.shape)
            qvel += noise * self.robot_vel_noise_amp[:9] * self.np_random.uniform(-1.0, 1.0, qvel.shape)
            self._last_robot_qpos = qpos  # the velocity controller integrates from the observed position
            return np.concatenate((qpos.copy(), qvel.copy()))

    class KitchenEnv(LibraryKitchenEnv):
        """``FrankaKitchen-v1`` whose robot observation works on every mujoco version (see the module doc).

        The library's ``__init__`` builds the robot and reads it at once; assigning ``robot_env`` goes
        through this property, which gives the new robot the by-address reading before that first read.
        """

        @property
        def robot_env(self):
            return self.__dict__["robot_env"]

        @robot_env.setter
        def robot_env(self, robot) -> None:
            if type(robot) is FrankaRobot:
                robot.__class__ = RobotByAddress  # same state, one overridden method
            self.__dict__["robot_env"] = robot

    KitchenEnv.__module__ = RobotByAddress.__module__ = __name__
    return KitchenEnv


def _robot_joints(robot) -> np.ndarray:
    """Ids of the robot's joints (names starting with "robot", in model order), checked to be 1-dof."""
    ids = getattr(robot, "_flowrl_robot_joints", None)
    if ids is None:
        names = robot.model_names.joint_names
        ids = np.array([robot.model_names.joint_name2id[n] for n in names if n.startswith("robot")], dtype=np.int64)
        kinds = {int(t) for t in robot.model.jnt_type[ids]}
        import mujoco

        one_dof = {int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)}
        if not kinds <= one_dof:
            raise RuntimeError(f"Franka robot joints of types {sorted(kinds)}; expected hinge/slide joints only")
        robot._flowrl_robot_joints = ids
    return ids
