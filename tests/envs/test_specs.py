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
