"""gymnasium-robotics through flowrl: every D4RL suite's environment makes, resets and steps (Kitchen with
flowrl's fix on this mujoco), and a missing gymnasium-robotics is a one-line error naming the extra."""

from __future__ import annotations

import gymnasium
import mujoco
import numpy as np
import pytest
from flowrl.envs import make_env
from flowrl.envs.observations import map_for_space
from flowrl.envs.robotics import MISSING_EXTRA, make_robotics_env

KITCHEN_TASKS = ["microwave", "kettle", "bottom burner", "light switch"]


@pytest.mark.parametrize(
    "gym_id, obs_size, act_size",
    [
        ("PointMaze_UMaze-v3", 8, 2),
        ("AntMaze_UMaze-v4", 31, 8),
        ("AdroitHandDoor-v1", 39, 28),
        ("AdroitHandHammer-v1", 46, 26),
        ("AdroitHandPen-v1", 45, 24),
        ("AdroitHandRelocate-v1", 39, 30),
        ("FrankaKitchen-v1", 59 + 2 * 12, 9),
    ],
)
def test_suite_environments_step_through_flowrl(gym_id, obs_size, act_size):
    kwargs = {"tasks_to_complete": KITCHEN_TASKS} if gym_id.startswith("Franka") else {}
    raw = make_env(gym_id, **kwargs)
    obs_map = map_for_space(raw.observation_space)
    raw.close()
    env = make_env(gym_id, observation_map=obs_map, **kwargs)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (obs_size,) and env.action_space.shape == (act_size,)
    for _ in range(3):
        obs, reward, term, trunc, info = env.step(env.action_space.sample())
    assert np.isfinite(obs).all() and np.isfinite(reward)
    env.close()


def _named_joint_reading(robot):
    """The robot joints read through mujoco's named accessors: a reference independent of the addresses."""
    names = [n for n in robot.model_names.joint_names if n.startswith("robot")]
    qpos = np.concatenate([robot.data.joint(n).qpos for n in names])
    qvel = np.concatenate([robot.data.joint(n).qvel for n in names])
    return qpos, qvel


def test_kitchen_robot_reading_matches_named_joints_and_the_librarys_noise():
    env = make_robotics_env("FrankaKitchen-v1", tasks_to_complete=KITCHEN_TASKS)
    env.reset(seed=3)
    for _ in range(5):
        env.step(env.action_space.sample())
    robot = env.unwrapped.robot_env
    qpos, qvel = _named_joint_reading(robot)
    # the noise the library draws: positions, then velocities, uniform(-1, 1) from the env's generator
    rng = np.random.Generator(type(robot.np_random.bit_generator)())
    rng.bit_generator.state = robot.np_random.bit_generator.state
    u_pos, u_vel = rng.uniform(-1, 1, 9), rng.uniform(-1, 1, 9)
    got = robot._get_obs()
    ratio = robot.robot_noise_ratio
    np.testing.assert_allclose(got[:9], qpos + ratio * robot.robot_pos_noise_amp[:9] * u_pos, rtol=0, atol=1e-15)
    np.testing.assert_allclose(got[9:], qvel + ratio * robot.robot_vel_noise_amp[:9] * u_vel, rtol=0, atol=1e-15)
    assert ratio > 0 and np.abs(got[:9] - qpos).max() > 0  # the noise is there and was checked
    np.testing.assert_array_equal(robot._last_robot_qpos, got[:9])
    env.close()


def test_kitchen_keeps_its_registered_id_limit_and_task_reward():
    env = make_robotics_env("FrankaKitchen-v1", tasks_to_complete=["microwave"])
    assert env.spec.id == "FrankaKitchen-v1" and env.spec.max_episode_steps == 280
    obs, _ = env.reset(seed=0)
    assert set(obs["desired_goal"]) == {"microwave"}
    # open the microwave joint by hand: the library's task check must count it
    data = env.unwrapped.data
    data.qpos[22] = -0.75
    mujoco.mj_forward(env.unwrapped.model, data)
    _, reward, terminated, _, info = env.step(np.zeros(9))
    assert reward == 1.0 and terminated and info["episode_task_completions"] == ["microwave"]
    env.close()


def test_missing_gymnasium_robotics_names_the_extra(monkeypatch):
    import sys

    from flowrl.envs import robotics

    registry = {k: v for k, v in gymnasium.registry.items() if not robotics.needs_robotics(k)}
    monkeypatch.setattr(gymnasium, "registry", registry)
    monkeypatch.setitem(sys.modules, "gymnasium_robotics", None)  # import fails
    robotics._register_all.cache_clear()
    try:
        with pytest.raises(ValueError) as e:
            make_env("PointMaze_UMaze-v3")
    finally:
        robotics._register_all.cache_clear()
    assert str(e.value) == MISSING_EXTRA and "flowrl[robotics]" in str(e.value)
