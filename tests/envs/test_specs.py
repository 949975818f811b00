import numpy as np
import pytest
from flowrl.envs import get_spec, normalized_score

# D4RL reference scores (d4rl/infos.py) and the Decision Transformer paper's target returns.
D4RL = {
    "hopper": (-20.272305, 3234.3, (3600.0, 1800.0)),
    "halfcheetah": (-280.178953, 12135.0, (12000.0, 6000.0)),
    "walker2d": (1.629008, 4592.3, (5000.0, 2500.0)),
}


@pytest.mark.parametrize("env", sorted(D4RL))
def test_normalized_score_matches_d4rl_formula(env):
    lo, hi, targets = D4RL[env]
    spec = get_spec(f"{env}-medium-v2")
    assert (spec.ref_min_score, spec.ref_max_score, spec.target_returns) == (lo, hi, targets)
    returns = np.array([lo, hi, 0.5 * (lo + hi), 1234.5])
    np.testing.assert_allclose(normalized_score(env, returns), 100 * (returns - lo) / (hi - lo), rtol=1e-12)
    assert normalized_score(env, lo) == 0.0
    assert normalized_score(env, hi) == pytest.approx(100.0)


@pytest.mark.parametrize(
    "name, gym_id",
    [
        ("hopper", "Hopper-v5"),
        ("Hopper-v4", "Hopper-v4"),
        ("mujoco/walker2d/expert-v0", "Walker2d-v5"),
        ("flowrl/halfcheetah/medium-v0", "HalfCheetah-v5"),
        ("hopper-medium", "Hopper-v5"),
    ],
)
def test_names_resolve(name, gym_id):
    assert get_spec(name).gym_id == gym_id


def test_generic_gym_id_takes_time_limit_from_registry():
    assert get_spec("Pendulum-v1").max_episode_steps == 200
    assert get_spec("CartPole-v1").max_episode_steps == 500
    assert get_spec("InvertedPendulum-v5").max_episode_steps == 1000
    assert not get_spec("Pendulum-v1").has_reference
    with pytest.raises(ValueError, match="no reference scores"):
        normalized_score("Pendulum-v1", 1.0)
    assert normalized_score("Pendulum-v1", 5.0, ref_min=0.0, ref_max=10.0) == 50.0


# D4RL's other suites: (gym id, episode limit, ref min, ref max) from d4rl/infos.py and D4RL's / Minari's
# time limits, written out here independently of envs/specs.py.
SUITES = {
    "pointmaze-umaze": ("PointMaze_UMaze-v3", 300, 23.85, 161.86),
    "pointmaze-medium": ("PointMaze_Medium-v3", 600, 13.13, 277.39),
    "pointmaze-large": ("PointMaze_Large-v3", 800, 6.7, 273.99),
    "antmaze-umaze": ("AntMaze_UMaze-v4", 700, 0.0, 1.0),
    "antmaze-medium": ("AntMaze_Medium-v4", 1000, 0.0, 1.0),
    "antmaze-large": ("AntMaze_Large-v4", 1000, 0.0, 1.0),
    "door": ("AdroitHandDoor-v1", 200, -56.512833, 2880.5693087298737),
    "hammer": ("AdroitHandHammer-v1", 200, -274.856578, 12794.134825156867),
    "pen": ("AdroitHandPen-v1", 200, 96.262799, 3076.8331017826877),
    "relocate": ("AdroitHandRelocate-v1", 200, -6.425911, 4233.877797728884),
    "kitchen-complete": ("FrankaKitchen-v1", 280, 0.0, 4.0),
    "kitchen-partial": ("FrankaKitchen-v1", 450, 0.0, 4.0),
    "kitchen-mixed": ("FrankaKitchen-v1", 450, 0.0, 4.0),
}


@pytest.mark.parametrize("task", sorted(SUITES))
def test_suite_specs(task):
    gym_id, limit, lo, hi = SUITES[task]
    spec = get_spec(task)
    assert (spec.name, spec.gym_id, spec.max_episode_steps, spec.ref_min_score, spec.ref_max_score) == (
        task,
        gym_id,
        limit,
        lo,
        hi,
    )
    assert spec.target_returns and spec.target_returns[0] == hi and spec.success is not None
    assert normalized_score(spec, hi) == pytest.approx(100.0) and normalized_score(spec, lo) == 0.0


@pytest.mark.parametrize(
    "name, task",
    [
        ("maze2d-umaze-v1", "pointmaze-umaze"),
        ("maze2d-large-v1", "pointmaze-large"),
        ("D4RL/pointmaze/medium-v2", "pointmaze-medium"),
        ("pointmaze-umaze", "pointmaze-umaze"),
        ("flowrl/pointmaze/medium-v0", "pointmaze-medium"),
        ("PointMaze_Large-v3", "pointmaze-large"),
        ("antmaze-umaze-v2", "antmaze-umaze"),
        ("antmaze-umaze-diverse-v2", "antmaze-umaze"),
        ("antmaze-medium-play-v2", "antmaze-medium"),
        ("antmaze-large-diverse-v2", "antmaze-large"),
        ("D4RL/antmaze/umaze-v1", "antmaze-umaze"),
        ("AntMaze_Medium_Diverse_GR-v4", "antmaze-medium"),
        ("door-human-v1", "door"),
        ("hammer-cloned-v1", "hammer"),
        ("D4RL/pen/expert-v2", "pen"),
        ("AdroitHandRelocate-v1", "relocate"),
        ("kitchen-complete-v0", "kitchen-complete"),
        ("kitchen-partial-v0", "kitchen-partial"),
        ("D4RL/kitchen/mixed-v2", "kitchen-mixed"),
    ],
)
def test_suite_names_resolve(name, task):
    spec = get_spec(name)
    assert spec.name == task
    if "_" in name or name.startswith("Adroit"):
        assert spec.gym_id == name  # a gymnasium id keeps its version and variant


def test_evaluation_settings_of_the_suites():
    from gymnasium_robotics.envs.maze import maps

    umaze = get_spec("pointmaze-umaze").make_kwargs()
    # Maze2D: a fixed goal in the U's top-left cell, random starts, continuing episodes
    assert umaze["maze_map"][1][1] == maps.GOAL and umaze["continuing_task"] and not umaze["reset_target"]
    assert sum(c in (maps.GOAL, maps.RESET) for row in umaze["maze_map"] for c in row) == 1
    ant = get_spec("antmaze-large").make_kwargs()
    # AntMaze: fixed start and goal, the episode ends at the goal (return = success)
    assert ant["maze_map"][7][9] == maps.GOAL and ant["maze_map"][1][1] == maps.RESET
    assert not ant["continuing_task"]
    kitchen = get_spec("kitchen-mixed").make_kwargs()
    assert kitchen["tasks_to_complete"] == ["microwave", "kettle", "bottom burner", "light switch"]
    assert kitchen["terminate_on_tasks_completed"] and kitchen["remove_task_when_completed"]
    assert get_spec("kitchen-complete").make_kwargs()["tasks_to_complete"][-1] == "slide cabinet"


def test_unknown_suite_names_fail_in_one_line():
    with pytest.raises(ValueError, match="unknown environment 'maze2d-spiral-v1'"):
        get_spec("maze2d-spiral-v1")
