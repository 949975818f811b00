"""The T-maze memory task: geometry, cue timing, and a behaviour policy whose arm choice ignores the cue."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from flowrl.envs import get_spec, make_env
from flowrl.envs.tmaze import GYM_ID, TMazeEnv, collect_tmaze, scripted_actions
from gymnasium.utils.env_checker import check_env

from flowrl.errors import InputError


def test_registered_and_passes_gymnasiums_checks():
    spec = get_spec("tmaze")
    assert get_spec(GYM_ID) == spec == get_spec("tmaze-mixed") == get_spec("flowrl/tmaze/mixed-v0")
    assert spec.gym_id == GYM_ID and (spec.ref_min_score, spec.ref_max_score) == (0.0, 1.0)
    env = make_env("tmaze")
    assert env.spec.max_episode_steps == spec.max_episode_steps == 500
    check_env(gym.make(GYM_ID).unwrapped, skip_render_check=True)


def test_the_cue_is_gone_long_before_the_junction_can_be_reached():
    env = TMazeEnv()
    obs, info = env.reset(seed=3)
    seen = [obs[2]]
    arrival = 0
    for _ in range(400):
        obs, r, term, _, _ = env.step(np.array([1.0, 1.0]))  # full speed along x, pushing into the wall
        seen.append(obs[2])
        arrival += 1
        if obs[0] * env.length >= env.length - 0.5:
            break
        assert abs(obs[1] * env.arm) <= 0.5  # the corridor's walls
    assert (np.array(seen[: env.cue_steps]) == info["cue"]).all() and not np.any(seen[env.cue_steps :])
    assert arrival >= (env.length - 0.5) / env.speed - 1 and arrival - env.cue_steps > 150  # K=20 sees no cue
    while not term:  # up the arm: the episode ends there, paid only at the cued arm
        obs, r, term, _, _ = env.step(np.array([0.0, 1.0]))
    assert r == (1.0 if info["cue"] > 0 else 0.0)


@pytest.mark.parametrize("p_correct,success", [(1.0, 1.0), (0.0, 0.0)])
def test_behaviour_policy_goes_to_the_arm_it_is_told(p_correct, success):
    data = collect_tmaze(3000, seed=1, p_correct=p_correct, progress=False)
    episodes = int(data["terminals"].sum())
    assert episodes >= 6 and not data["timeouts"].any()
    assert data["rewards"].sum() == success * episodes
    # in the corridor the actions do not depend on the cue: same noise, same actions whatever the cue
    obs = np.array([[0.3, 0.1, 1.0], [0.3, 0.1, -1.0], [0.3, 0.1, 0.0]], np.float32)
    acts = [scripted_actions(o[None], np.array([1.0]), np.random.default_rng(0)) for o in obs]
    np.testing.assert_array_equal(acts[0], acts[1])
    np.testing.assert_array_equal(acts[0], acts[2])


def test_action_noise_is_the_given_std_and_bad_noise_is_refused():
    obs = np.tile(np.array([[0.3, 0.0, 0.0]], np.float32), (4000, 1))  # mid-corridor, centred: mean (0.8, 0)
    for std in (0.05, 0.15):
        acts = scripted_actions(obs, np.ones(4000), np.random.default_rng(0), noise=std)
        np.testing.assert_allclose(acts.std(0), [std, std], rtol=0.1)
    with pytest.raises(InputError, match="noise in"):
        collect_tmaze(10, noise=1.5, progress=False)
