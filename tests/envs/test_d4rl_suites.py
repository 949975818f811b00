"""D4RL HDF5 files of Maze2D, AntMaze, Kitchen and Adroit, in D4RL's exact key layout, made here from
real gymnasium-robotics rollouts: the reader puts them in gymnasium-robotics' layout, so their rows equal
what the wrapped live environment gives; a file of another maze or task fails in one line."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from flowrl.envs import load_dataset, make_env
from flowrl.envs.collect.maze import MazeCollectConfig, MazePlanner, _episode
from flowrl.envs.io_d4rl import d4rl_filename, d4rl_url, find_cached_d4rl
from flowrl.envs.specs import get_spec

R = np.array([[0.0, 1.0], [-1.0, 0.0]])  # D4RL Maze2D axes (x = row, y = column) -> PointMaze axes
T = 200  # steps per recorded episode


def _d4rl_xy(xy_gr: np.ndarray, h: int, w: int) -> np.ndarray:
    """PointMaze position -> D4RL Maze2D position: cell (i, j) is centred at (i, j) in D4RL (its docs: the
    U-maze's free region is [0.5, 3.5]² minus the wall row), at ((j + .5) − w/2, h/2 − (i + .5)) in PointMaze."""
    i = h / 2 - 0.5 - xy_gr[:, 1]
    j = xy_gr[:, 0] - 0.5 + w / 2
    return np.stack([i, j], axis=1)


def _maze2d_file(path, task="pointmaze-umaze", episodes=2, seed=0):
    """A Maze2D file in D4RL's layout from PointMaze episodes of the Maze2D recipe, turned into D4RL's frame."""
    env = make_env(task)
    maze = env.unwrapped.maze
    planner = MazePlanner(maze.maze_map)
    rng = np.random.default_rng(seed)
    cfg = MazeCollectConfig(task)
    eps = [_episode(env, maze, planner, cfg, rng, seed + e, T) for e in range(episodes)]
    env.close()
    h, w = len(maze.maze_map), len(maze.maze_map[0])
    xy = np.concatenate([e["observations"]["observation"][:-1, :2] for e in eps])
    vel = np.concatenate([e["observations"]["observation"][:-1, 2:] for e in eps])
    goals = np.concatenate([e["infos"]["behavior_goal"][:-1] for e in eps])
    actions = np.concatenate([e["actions"] for e in eps])
    with h5py.File(path, "w") as f:
        f["observations"] = np.concatenate([_d4rl_xy(xy, h, w), vel @ R], axis=1).astype(np.float32)
        f["actions"] = (actions @ R).astype(np.float32)  # forces turn like velocities: D4RL = R^T @ PointMaze
        f["rewards"] = np.concatenate([e["rewards"] for e in eps]).astype(np.float32)
        f["terminals"] = np.zeros(len(xy), bool)
        f["timeouts"] = np.zeros(len(xy), bool)
        f["infos/goal"] = _d4rl_xy(goals, h, w).astype(np.float32)
        f["infos/qpos"] = _d4rl_xy(xy, h, w).astype(np.float32)
        f["infos/qvel"] = (vel @ R).astype(np.float32)
    return eps


def test_d4rl_frame_anchors():
    """D4RL's U-maze start (3, 1) and goal (1, 1) land in PointMaze's cells (3, 1) and (1, 1)."""
    from flowrl.envs.d4rl_suites import _maze2d_frame

    env = make_env("pointmaze-umaze")
    maze = env.unwrapped.maze
    got = _maze2d_frame(maze.maze_map)(np.array([[3.0, 1.0], [1.0, 1.0]]))
    np.testing.assert_allclose(got[0], maze.cell_rowcol_to_xy(np.array([3, 1])))
    np.testing.assert_allclose(got[1], maze.cell_rowcol_to_xy(np.array([1, 1])))
    env.close()


def test_maze2d_file_reads_as_the_live_pointmaze(tmp_path):
    path = tmp_path / d4rl_filename("maze2d-umaze-v1")
    eps = _maze2d_file(path)
    ds = load_dataset(path)  # the file name says which maze
    assert ds.env_name == "pointmaze-umaze" and ds.obs_dim == 8
    assert not ds.terminals.any() and ds.num_episodes > 2  # split where the behaviour's goal changed
    starts = set(ds.episode_starts.tolist())
    assert {0, T} <= starts
    env = make_env("pointmaze-umaze", observation_map=ds.observation_map)
    for e, episode in enumerate(eps):
        rows = ds.observations[T * e : T * e + T]
        o, _ = env.reset(seed=episode["seed"])
        live = [o]
        for a in ds.actions[T * e : T * e + T - 1]:  # the file's actions, turned back, drive the same path
            o, *_ = env.step(a)
            live.append(o)
        live = np.stack(live)
        np.testing.assert_allclose(rows[:, [0, 1, 4, 5, 6, 7]], live[:, [0, 1, 4, 5, 6, 7]], atol=1e-5)
        # desired_goal: the evaluation goal cell's centre (the live one adds ±0.25 of a cell)
        assert np.abs(rows[:, 2:4] - live[:, 2:4]).max() <= 0.25 + 1e-6
    env.close()


def test_maze2d_file_of_another_maze_fails(tmp_path):
    path = tmp_path / "maze.hdf5"
    _maze2d_file(path, task="pointmaze-large")
    with pytest.raises(ValueError, match="leave the free cells of pointmaze-umaze's maze .* another maze") as e:
        from flowrl.envs.io_d4rl import read_d4rl_hdf5

        read_d4rl_hdf5(path, {"dataset_name": "maze2d-umaze-v1"})
    assert "\n" not in str(e.value)


def test_d4rl_names_find_their_files(tmp_path, monkeypatch):
    assert d4rl_filename("maze2d-medium-v1") == "maze2d-medium-sparse-v1.hdf5"
    assert d4rl_filename("door-human-v1") == "door-human-v1.hdf5"
    assert d4rl_url("kitchen-mixed-v0").endswith("/kitchen/kitchen_microwave_kettle_bottomburner_light-v0.hdf5")
    assert d4rl_url("antmaze-umaze-v2").endswith(
        "/ant_maze_v2/Ant_maze_u-maze_noisy_multistart_False_multigoal_False_sparse_fixed.hdf5"
    )
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    _maze2d_file(tmp_path / "maze2d-umaze-sparse-v1.hdf5")
    assert find_cached_d4rl("maze2d-umaze-v1") == tmp_path / "maze2d-umaze-sparse-v1.hdf5"
    ds = load_dataset("maze2d-umaze-v1")
    assert ds.env_name == "pointmaze-umaze" and ds.metadata["ref_max_score"] == 161.86


def _record(task, steps, seed=0):
    """Observations, actions and rewards of a random-action rollout in a suite's evaluation environment."""
    env = make_env(task)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    seen, acts, rews = [obs], [], []
    for _ in range(steps):
        a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, r, *_ = env.step(a)
        seen.append(obs)
        acts.append(a)
        rews.append(r)
    env.close()
    return seen, np.stack(acts), np.asarray(rews, np.float32)


def _write(path, obs, actions, rewards, infos=None):
    with h5py.File(path, "w") as f:
        f["observations"] = obs.astype(np.float32)
        f["actions"] = actions
        f["rewards"] = rewards
        f["terminals"] = np.zeros(len(obs), bool)
        timeouts = np.zeros(len(obs), bool)
        timeouts[-1] = True
        f["timeouts"] = timeouts
        for k, v in (infos or {}).items():
            f[f"infos/{k}"] = v


def test_kitchen_file_keeps_the_positions_of_the_live_observation(tmp_path):
    seen, actions, rewards = _record("kitchen-mixed", 12)
    live = np.stack([o["observation"] for o in seen])
    # D4RL's Kitchen observation: robot joint positions, object positions, then a 30-value goal vector
    d4rl_obs = np.concatenate([live[:, :9], live[:, 18:39], np.full((len(live), 30), 0.7)], axis=1)
    path = tmp_path / d4rl_filename("kitchen-mixed-v0")
    _write(path, d4rl_obs[:-1], actions, rewards)
    ds = load_dataset(path)
    assert ds.env_name == "kitchen-mixed" and ds.obs_dim == 30
    env = make_env("kitchen-mixed", observation_map=ds.observation_map)
    o, _ = env.reset(seed=0)
    np.testing.assert_allclose(o, ds.observations[0], atol=1e-6)
    for a, row in zip(actions[:-1], ds.observations[1:]):
        o, *_ = env.step(a)
        np.testing.assert_allclose(o, row, atol=1e-6)
    env.close()


def test_adroit_file_of_another_task_fails(tmp_path):
    seen, actions, rewards = _record("door", 5)
    infos = {"door_body_pos": np.zeros((5, 3), np.float32), "qpos": np.zeros((5, 30), np.float32)}
    path = tmp_path / "door-human-v1.hdf5"
    _write(path, np.stack(seen[:-1]), actions, rewards, infos)
    ds = load_dataset(path)
    assert ds.env_name == "door" and ds.obs_dim == 39
    from flowrl.envs.io_d4rl import read_d4rl_hdf5

    with pytest.raises(ValueError, match="this is a D4RL door file .* not relocate"):
        read_d4rl_hdf5(path, {"dataset_name": "relocate-human-v1"})


def test_antmaze_file_stays_in_d4rls_frame(tmp_path):
    rng = np.random.default_rng(0)
    n = 20
    obs = rng.normal(size=(n, 29)).astype(np.float32)
    goals = np.tile(np.array([[0.0, 8.0]], np.float32), (n, 1))
    path = tmp_path / d4rl_filename("antmaze-umaze-v2")
    _write(path, obs, rng.uniform(-1, 1, (n, 8)).astype(np.float32), np.zeros(n, np.float32), {"goal": goals})
    ds = load_dataset(path)
    m = ds.observation_map
    assert m.keys == ("achieved_goal", "desired_goal", "observation") and ds.obs_dim == 31
    np.testing.assert_array_equal(ds.observations[:, :2], obs[:, :2])
    np.testing.assert_array_equal(ds.observations[:, 2:4], goals)
    np.testing.assert_array_equal(ds.observations[:, 4:], obs[:, 2:])
    # D4RL's ant mazes are mirrored relative to gymnasium-robotics': no evaluation environment is named
    assert ds.metadata["maze_frame"] == "d4rl" and ds.env_name is None
    assert get_spec("antmaze-umaze-v2").name == "antmaze-umaze"


def test_dense_mazes_are_refused_not_scored_as_sparse():
    from flowrl.envs.specs import suite_task

    for name in ("maze2d-umaze-dense-v1", "D4RL/pointmaze/medium-dense-v2"):
        with pytest.raises(ValueError, match="dense-reward maze; flowrl scores the sparse ones") as e:
            get_spec(name)
        assert "\n" not in str(e.value) and suite_task(name) is None
    assert get_spec("maze2d-umaze-v1").ref_min_score == 23.85  # the sparse name still resolves


def test_datasets_list_known_names_every_suite_dataset(tmp_path, monkeypatch, capsys):
    from flowrl.envs.d4rl_suites import MINARI_IDS, known_names
    from flowrl.scripts.cli import main

    names = [n for n, _ in known_names()]
    assert len(names) == len(set(names)) == 24 + 24  # maze2d 3, antmaze 6, adroit 12, kitchen 3; Minari alike
    assert {get_spec(n).name for n in MINARI_IDS} == {get_spec(n).name for n, k in known_names() if k == "d4rl"}
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    _maze2d_file(tmp_path / "maze2d-umaze-sparse-v1.hdf5", episodes=1)
    assert main(["datasets", "list", "--known"]) == 0
    out = capsys.readouterr().out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    rows = {c[0]: c for c in cells}
    assert rows["maze2d-umaze-v1"][-1] == "here" and rows["maze2d-medium-v1"][-1] == "-"
    assert rows["D4RL/kitchen/mixed-v2"][2:5] == ["kitchen-mixed", "FrankaKitchen-v1", "450"]
    assert rows["antmaze-large-play-v2"][2:7] == ["antmaze-large", "AntMaze_Large-v4", "1000", "0", "1"]
