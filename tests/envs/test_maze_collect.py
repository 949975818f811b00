"""The Maze2D recipe: shortest-path waypoints, goals redrawn when reached, D4RL rewards for the evaluation
goal, and datasets that round-trip through Minari's own reader into the rows the rollout sees."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from flowrl.envs import load_dataset, make_env
from flowrl.envs.collect.maze import MazeCollectConfig, MazePlanner, collect_maze

U_MAZE = [[1, 1, 1, 1, 1], [1, 0, 0, 0, 1], [1, 1, 1, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]]


def _distances(maze, goal):
    """Breadth-first distances to ``goal``, computed here independently of the planner."""
    free = {(r, c) for r, row in enumerate(maze) for c, v in enumerate(row) if v != 1}
    dist, queue = {goal: 0}, deque([goal])
    while queue:
        r, c = queue.popleft()
        for n in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if n in free and n not in dist:
                dist[n] = dist[(r, c)] + 1
                queue.append(n)
    return dist


@pytest.mark.parametrize("maze_name", ["U_MAZE", "MEDIUM_MAZE", "LARGE_MAZE"])
def test_planner_follows_shortest_paths(maze_name):
    from gymnasium_robotics.envs.maze import maps

    maze = getattr(maps, maze_name)
    planner = MazePlanner(maze)
    for goal in planner.free:
        dist = _distances(maze, goal)
        for cell in planner.free:
            nxt = planner.next_cell(goal, cell)
            if cell == goal:
                assert nxt == goal
            else:  # a neighbour, one step closer
                assert abs(nxt[0] - cell[0]) + abs(nxt[1] - cell[1]) == 1 and dist[nxt] == dist[cell] - 1


def test_umaze_path_goes_around_the_wall():
    planner = MazePlanner(U_MAZE)
    cell, path = (3, 1), [(3, 1)]
    while cell != (1, 1):
        cell = planner.next_cell((1, 1), cell)
        path.append(cell)
    assert path == [(3, 1), (3, 2), (3, 3), (2, 3), (1, 3), (1, 2), (1, 1)]


@pytest.fixture(scope="module")
def umaze(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        info = collect_maze(MazeCollectConfig("pointmaze-umaze", transitions=900, seed=3), progress=False)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return root, info


def test_dataset_round_trips_through_minari_and_matches_the_rollout(umaze, monkeypatch):
    import minari

    root, info = umaze
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    assert info["episodes"] == 3 and info["transitions"] == 900
    ds = load_dataset("pointmaze-umaze")  # the flowrl name of flowrl/pointmaze/umaze-v0
    theirs = minari.load_dataset("flowrl/pointmaze/umaze-v0")
    assert theirs.total_episodes == 3 and theirs.total_steps == 900 and ds.num_transitions == 900
    assert ds.env_name == "PointMaze_UMaze-v3" and ds.metadata["ref_max_score"] == 161.86
    env = make_env(ds.env_name, observation_map=ds.observation_map)
    for e, episode in enumerate(theirs.iterate_episodes()):
        rows = ds.episode(e)
        np.testing.assert_array_equal(rows["actions"], episode.actions)
        np.testing.assert_array_equal(rows["rewards"], episode.rewards.astype(np.float32))
        obs = np.concatenate([episode.observations[k] for k in ("achieved_goal", "desired_goal", "observation")], 1)
        np.testing.assert_allclose(rows["observations"], obs[:-1], rtol=0, atol=1e-6)
        # replaying the actions in the live evaluation environment gives the same rows and rewards
        o, _ = env.reset(seed=3 + e)  # episode i of the recipe resets with seed + i
        replay, rewards = [o], []
        for a in episode.actions:
            o, r, *_ = env.step(a)
            replay.append(o)
            rewards.append(r)
        np.testing.assert_allclose(np.stack(replay), obs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(rewards, episode.rewards)
        goals = episode.infos["behavior_goal"]
        assert len(goals) == 301 and len(np.unique(goals, axis=0)) > 1  # goals were reached and redrawn
    env.close()


def test_collection_is_deterministic(umaze, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    collect_maze(MazeCollectConfig("pointmaze-umaze", transitions=900, seed=3), progress=False)
    again = load_dataset("flowrl/pointmaze/umaze-v0")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(umaze[0]))
    first = load_dataset("flowrl/pointmaze/umaze-v0")
    np.testing.assert_array_equal(again.observations, first.observations)
    np.testing.assert_array_equal(again.actions, first.actions)


def test_bad_maze_config():
    with pytest.raises(ValueError, match="unknown maze task 'pointmaze-spiral'"):
        MazeCollectConfig("pointmaze-spiral")
    with pytest.raises(ValueError, match="noise"):
        MazeCollectConfig(noise=-1.0)


def test_cli_collects_a_maze_and_refuses_an_unknown_one(capsys):
    from flowrl.scripts.cli import main

    assert main(["collect", "pointmaze-umaze", "--transitions", "300", "--seed", "1", "--no-progress"]) == 0
    assert "flowrl/pointmaze/umaze-v0" in capsys.readouterr().out
    ds = load_dataset("pointmaze-umaze")
    assert ds.num_transitions == 300 and ds.metadata["collect_config"]["seed"] == 1
    assert main(["collect", "pointmaze-umaze", "--transitions", "300", "--no-progress"]) == 2  # exists: no overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["collect", "pointmaze-spiral", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown maze task 'pointmaze-spiral'" in err and len(err.strip().splitlines()) == 1


def test_existing_dataset_is_refused_before_collecting(tmp_path, monkeypatch):
    import flowrl.envs.environment as environment

    from flowrl.errors import OutputExistsError

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    (tmp_path / "flowrl/pointmaze/umaze-v0").mkdir(parents=True)

    def no_env(*args, **kwargs):
        raise AssertionError("collection started")

    monkeypatch.setattr(environment, "make_env", no_env)
    with pytest.raises(OutputExistsError, match="already exists .* --overwrite"):
        collect_maze(MazeCollectConfig("pointmaze-umaze", transitions=300), progress=False)
    with pytest.raises(ValueError, match="malformed Minari dataset id 'mazes'"):
        MazeCollectConfig("pointmaze-umaze", dataset_id="mazes")
