"""Vectorized evaluation against a plain one-environment loop."""

import gymnasium as gym
import numpy as np
import pytest
from flowrl.envs import EvalResult, Policy, TrajectoryDataset, check_compatible, evaluate, normalized_score

MAX_STEPS = 40
KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


class ScriptedPolicy:
    """Deterministic per-row feedback policy. Row-wise elementwise maths only, so a batch of N gives
    bit-identical actions to N single calls; it also uses the step count and last reward so that reset
    and ``last_rewards`` handling show up in the returns."""

    def __init__(self):
        self.resets = []

    def reset(self, env_mask, target_return):
        env_mask = np.asarray(env_mask, bool)
        if not hasattr(self, "t") or len(self.t) != len(env_mask):
            self.t = np.zeros(len(env_mask), np.int64)
        self.t[env_mask] = 0
        self.target = target_return
        self.resets.append((env_mask.copy(), target_return))

    def act(self, observations, last_rewards):
        assert observations.dtype == np.float32 and last_rewards.dtype == np.float32
        scale = 0.0 if self.target is None else self.target / 1000.0
        a = np.tanh(observations[:, 2:5] * 2.0 + np.sin(0.3 * self.t)[:, None] + 0.1 * last_rewards[:, None] + scale)
        self.t += 1
        return a.astype(np.float32)


class WrongShape:
    """Returns actions of size 2 for Hopper's 3."""

    def reset(self, env_mask, target_return):
        pass

    def act(self, observations, last_rewards):
        return np.zeros((len(observations), 2))


def single_env_loop(policy, episodes, seed, target=None, max_steps=MAX_STEPS):
    env = gym.make("Hopper-v5", max_episode_steps=max_steps)
    returns, lengths = [], []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        policy.reset(np.ones(1, bool), target)
        last, total, steps, done = 0.0, 0.0, 0, False
        while not done:
            action = policy.act(obs[None].astype(np.float32), np.array([last], np.float32))[0]
            obs, r, term, trunc, _ = env.step(action)
            total += r
            steps += 1
            last = r
            done = term or trunc
        returns.append(total)
        lengths.append(steps)
    env.close()
    return np.array(returns), np.array(lengths)


@pytest.mark.parametrize("num_envs", [1, 3, 8], ids=lambda n: f"envs{n}")
def test_evaluate_equals_single_env_loop(num_envs):
    episodes, seed = 5, 11
    want_r, want_l = single_env_loop(ScriptedPolicy(), episodes, seed)
    assert len(set(want_l.tolist())) > 1  # episodes end at different times (terminations and the limit)
    policy = ScriptedPolicy()
    (res,) = evaluate(
        policy, "hopper", episodes=episodes, num_envs=num_envs, seed=seed, max_episode_steps=MAX_STEPS, progress=False
    )
    np.testing.assert_array_equal(res.lengths, want_l)
    np.testing.assert_allclose(res.returns, want_r, rtol=0, atol=1e-9)
    assert res.returns.dtype == np.float64 and res.lengths.dtype == np.int64
    n = min(num_envs, episodes)
    first_mask, _ = policy.resets[0]
    assert first_mask.shape == (n,) and first_mask.all()
    # one reset per episode, never more: every episode after the first n restarts exactly one env
    assert sum(int(m.sum()) for m, _ in policy.resets) == episodes
    np.testing.assert_allclose(res.normalized, normalized_score("hopper", want_r))
    assert res.env == "Hopper-v5" and res.seconds > 0


def test_target_returns_give_one_result_each():
    targets = (3600.0, 1800.0)
    results = evaluate(
        ScriptedPolicy(),
        "Hopper-v5",
        episodes=3,
        num_envs=3,
        seed=0,
        target_returns=targets,
        max_episode_steps=MAX_STEPS,
        progress=False,
    )
    assert [r.target_return for r in results] == list(targets)
    for r, t in zip(results, targets):
        want_r, want_l = single_env_loop(ScriptedPolicy(), 3, 0, target=t)
        np.testing.assert_allclose(r.returns, want_r, atol=1e-9)
        d = r.to_dict()
        assert d["return_mean"] == pytest.approx(want_r.mean()) and d["episodes"] == 3
        assert r.mean == pytest.approx(want_r.mean()) and r.std == pytest.approx(want_r.std())
        assert r.normalized_mean == pytest.approx(normalized_score("hopper", want_r).mean())


def test_async_vectorization_equals_single_env_loop():
    want_r, _ = single_env_loop(ScriptedPolicy(), 4, 3)
    (res,) = evaluate(
        ScriptedPolicy(),
        "hopper",
        episodes=4,
        num_envs=2,
        seed=3,
        max_episode_steps=MAX_STEPS,
        progress=False,
        vectorization="async",
    )
    np.testing.assert_allclose(res.returns, want_r, atol=1e-9)


@pytest.mark.parametrize("workers", [2, 3], ids=lambda w: f"workers{w}")
def test_workers_equal_single_env_loop(workers):
    episodes, seed = 5, 11  # 5 episodes over 2 or 3 workers: uneven shares
    want_r, want_l = single_env_loop(ScriptedPolicy(), episodes, seed)
    (res,) = evaluate(
        ScriptedPolicy(),
        "hopper",
        episodes=episodes,
        num_envs=4,
        seed=seed,
        max_episode_steps=MAX_STEPS,
        progress=False,
        workers=workers,
    )
    np.testing.assert_array_equal(res.lengths, want_l)
    np.testing.assert_allclose(res.returns, want_r, rtol=0, atol=1e-9)


def test_worker_errors_reach_the_caller():
    with pytest.raises(ValueError, match=r"policy.act returned shape \(1, 2\), expected \(1, 3\)"):
        evaluate(WrongShape(), "hopper", episodes=2, num_envs=2, progress=False, workers=2)
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        evaluate(WrongShape(), "hopper", episodes=2, progress=False, workers=0)
    with pytest.raises(ValueError, match="video recording needs workers=1"):
        evaluate(WrongShape(), "hopper", episodes=2, progress=False, workers=2, video="x.gif")
    with pytest.raises(ValueError, match="vectorization='async' needs workers=1"):
        evaluate(WrongShape(), "hopper", episodes=2, progress=False, workers=2, vectorization="async")


def test_no_reference_scores_and_ref_override():
    class Zero:
        def reset(self, env_mask, target_return):
            self.n = len(env_mask)

        def act(self, observations, last_rewards):
            return np.zeros((self.n, 1), np.float32)

    (r,) = evaluate(Zero(), "InvertedPendulum-v5", episodes=2, num_envs=2, max_episode_steps=10, progress=False)
    assert r.normalized is None and r.to_dict()["normalized_mean"] is None
    np.testing.assert_array_equal(r.lengths, [10, 10])
    (r,) = evaluate(
        Zero(),
        "InvertedPendulum-v5",
        episodes=2,
        num_envs=2,
        max_episode_steps=10,
        progress=False,
        ref_scores=(0.0, 20.0),
    )
    np.testing.assert_allclose(r.normalized, 50.0)
    assert isinstance(Zero(), Policy) and isinstance(ScriptedPolicy(), Policy)
    assert isinstance(r, EvalResult)


def test_bad_policy_output_and_arguments():
    with pytest.raises(ValueError, match=r"policy.act returned shape \(2, 2\), expected \(2, 3\)"):
        evaluate(WrongShape(), "hopper", episodes=2, num_envs=2, progress=False)
    with pytest.raises(ValueError, match="episodes and num_envs"):
        evaluate(WrongShape(), "hopper", episodes=0, progress=False)
    with pytest.raises(ValueError, match=".gif or .mp4"):
        evaluate(WrongShape(), "hopper", episodes=1, progress=False, video="x.avi")


def test_check_compatible(make_data):
    a = make_data(obs_dim=11, act_dim=3)
    ok = TrajectoryDataset.from_arrays(*(a[k] for k in KEYS))
    check_compatible(ok, "hopper")
    check_compatible(ok, gym.make("Hopper-v5"))
    b = make_data(obs_dim=17, act_dim=3)
    bad = TrajectoryDataset.from_arrays(*(b[k] for k in KEYS), metadata={"source": "cheetah.hdf5"})
    with pytest.raises(ValueError, match="cheetah.hdf5.*observations have size 17 but Hopper-v5 expects 11"):
        check_compatible(bad, "hopper")


def test_video_gif(tmp_path):
    path = tmp_path / "ep.gif"
    (r,) = evaluate(
        ScriptedPolicy(),
        "hopper",
        episodes=2,
        num_envs=2,
        max_episode_steps=8,
        progress=False,
        video=path,
        video_size=(64, 48),
    )
    import imageio.v2 as imageio

    frames = imageio.mimread(path)
    assert r.video == str(path)
    assert len(frames) == r.lengths[0] + 1 and frames[0].shape[:2] == (48, 64)
    assert [p.name for p in tmp_path.iterdir()] == ["ep.gif"]
