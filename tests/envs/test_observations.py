"""The observation map: validation, JSON/metadata round trips, gymnasium's flatten order, and the same
rows in the loader and in the rollout (dict observations and ``observation_indices``)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from flowrl.envs import TrajectoryDataset, check_compatible, evaluate, load_dataset, make_env, write_d4rl_hdf5
from flowrl.envs.observations import ObservationMap, check_env_space, dict_keys, map_for_space, wrap_env
from gymnasium import spaces

DICT_ENV = "FlowrlTestGoalPoint-v0"
FLAT_ENV = "FlowrlTestFlatPoint-v0"


class GoalPoint(gym.Env):
    """A point that moves by its action, with a nested dict observation like gymnasium-robotics' goal
    environments (Kitchen's goals are dicts keyed by task). Every leaf depends on the state, so any
    change of order or of a leaf shows up in the rows."""

    def __init__(self, flat: bool = False):
        self.flat = flat
        box = lambda n: spaces.Box(-np.inf, np.inf, (n,), np.float64)  # noqa: E731
        goal = spaces.Dict({"kettle": box(3), "burner": box(2)})
        self.observation_space = (
            box(5) if flat else spaces.Dict({"observation": box(4), "desired_goal": goal, "achieved_goal": box(2)})
        )
        self.action_space = spaces.Box(-1, 1, (2,), np.float32)

    def _obs(self):
        if self.flat:
            return np.concatenate([self.pos, self.vel, [self.t]])
        return {
            "observation": np.concatenate([self.pos, self.vel]),
            "desired_goal": {"kettle": self.goal[:3].copy(), "burner": self.goal[3:] * self.t},
            "achieved_goal": self.pos.copy(),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1, 1, 2)
        self.vel = np.zeros(2)
        self.goal = self.np_random.uniform(-1, 1, 5)
        self.t = 0.0
        return self._obs(), {}

    def step(self, action):
        self.vel = 0.5 * self.vel + np.asarray(action, dtype=np.float64)
        self.pos = self.pos + 0.1 * self.vel
        self.t += 1
        reward = -float(np.linalg.norm(self.pos - self.goal[:2]))
        return self._obs(), reward, False, False, {}


@pytest.fixture(scope="module", autouse=True)
def _registered():
    entry = f"{__name__}:GoalPoint"  # a string: Minari stores the spec as JSON
    gym.register(DICT_ENV, entry_point=entry, max_episode_steps=12)
    gym.register(FLAT_ENV, entry_point=entry, max_episode_steps=12, kwargs={"flat": True})
    yield
    gym.registry.pop(DICT_ENV)
    gym.registry.pop(FLAT_ENV)


class Recorder:
    """A policy that records the observations it is given and acts from a fixed-seed random stream."""

    def __init__(self, obs_map=None):
        self.observation_map = obs_map
        self.seen = []

    def reset(self, env_mask, target_return):
        self.rng = np.random.default_rng(0)

    def act(self, observations, last_rewards):
        self.seen.append(observations.copy())
        return self.rng.uniform(-1, 1, (len(observations), 2)).astype(np.float32)


# ---------------------------------------------------------------------- the map itself
def test_default_order_is_sorted_and_matches_gymnasium_flatten():
    env = GoalPoint()
    keys, sizes = dict_keys(env.observation_space)
    assert keys == ("achieved_goal", "desired_goal/burner", "desired_goal/kettle", "observation")
    assert sizes == (2, 2, 3, 4)
    obs, _ = env.reset(seed=3)
    env.step(np.array([0.3, -0.2]))
    obs = env._obs()
    m = map_for_space(env.observation_space)
    np.testing.assert_array_equal(m.apply(obs), spaces.flatten(env.observation_space, obs))
    # a sample gives the same layout as the space
    assert dict_keys(obs) == (keys, sizes)


def test_json_and_metadata_round_trip():
    m = ObservationMap(keys=("a", "b/c"), key_sizes=(3, 2), indices=(4, 0, 2))
    assert m.size == 5 and m.out_dim == 3
    assert ObservationMap.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    assert ObservationMap.from_metadata(json.loads(json.dumps(m.to_metadata()))) == m
    flat = ObservationMap(indices=(1, 3), size=11)
    assert ObservationMap.from_metadata(flat.to_metadata()) == flat
    assert ObservationMap.from_metadata({"env_name": "hopper"}) is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"indices": (0, 2, 2), "size": 5}, "twice"),
        ({"indices": (0, 5), "size": 5}, "out of range"),
        ({"indices": (-1,)}, "negative"),
        ({"indices": ()}, "empty"),
        ({"keys": ("a", "a"), "key_sizes": (1, 1)}, "twice"),
        ({"keys": ("a", "a/b"), "key_sizes": (1, 1)}, "both a leaf and a dict"),
        ({"keys": ("a",), "key_sizes": (1, 2)}, "1 keys but 2"),
        ({"keys": ("a",), "key_sizes": (3,), "size": 4}, "add up to 3"),
        ({"keys": ("a",)}, "together"),
        ({}, "no map"),
    ],
)
def test_invalid_maps_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        ObservationMap(**kwargs)
    assert "\n" not in str(e.value)


def test_apply_selects_in_the_given_order():
    m = ObservationMap(indices=(4, 0, 2), size=5)
    rows = np.arange(10.0).reshape(2, 5)
    np.testing.assert_array_equal(m.apply_rows(rows, 2), rows[:, [4, 0, 2]])


def test_env_space_checks():
    space = GoalPoint().observation_space
    ok = map_for_space(space)
    assert check_env_space(ok, space) == 11
    with pytest.raises(ValueError, match="desired_goal/lid.*not in .*goal-conditioned"):
        check_env_space(ObservationMap(keys=("observation", "desired_goal/lid"), key_sizes=(4, 1)), space)
    with pytest.raises(ValueError, match="size 5 in the data but 4"):
        check_env_space(ObservationMap(keys=("observation",), key_sizes=(5,)), space)
    with pytest.raises(ValueError, match="records no dict layout"):
        check_env_space(None, space)
    flat = GoalPoint(flat=True).observation_space
    with pytest.raises(ValueError, match="flattened from a dict"):
        check_env_space(ok, flat)
    with pytest.raises(ValueError, match="size 11 but .* size 5"):
        check_env_space(ObservationMap(indices=(0, 1), size=11), flat)
    with pytest.raises(ValueError, match="entry 7 is out of range"):
        check_env_space(ObservationMap(indices=(0, 7)), flat)
    assert check_env_space(ObservationMap(indices=(4, 1)), flat) == 2


# ---------------------------------------------------------------------- loader == rollout
def _stack(items):
    """Per-step (nested) dict observations -> one dict of stacked arrays, as Minari stores episodes."""
    if isinstance(items[0], dict):
        return {k: _stack([it[k] for it in items]) for k in items[0]}
    return np.stack(items)


def _collect_minari(dataset_id, episodes=3, seed=100):
    """A Minari dataset of the dict environment, written by Minari's own writer."""
    import minari
    from minari.data_collector import EpisodeBuffer

    env = gym.make(DICT_ENV)
    rng = np.random.default_rng(1)
    buffers = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        seen, acts, rews, terms, truncs = [obs], [], [], [], []
        done = False
        while not done:
            a = rng.uniform(-1, 1, 2).astype(np.float32)
            obs, r, term, trunc, _ = env.step(a)
            seen.append(obs)
            acts.append(a)
            rews.append(r)
            terms.append(term)
            truncs.append(trunc)
            done = term or trunc
        buffers.append(
            EpisodeBuffer(
                id=i,
                seed=seed + i,
                observations=_stack(seen),
                actions=np.stack(acts),
                rewards=np.asarray(rews),
                terminations=np.asarray(terms),
                truncations=np.asarray(truncs),
            )
        )
    minari.create_dataset_from_buffers(
        dataset_id,
        buffers,
        env=env,
        algorithm_name="random",
        author="test",
        description="dict observations",
        code_permalink="-",
        author_email="-",
    )
    env.close()


def test_minari_dict_rows_equal_the_wrapped_environment():
    _collect_minari("flowrl/goalpoint/random-v0")
    ds = load_dataset("flowrl/goalpoint/random-v0")
    m = ds.observation_map
    assert m.keys == ("achieved_goal", "desired_goal/burner", "desired_goal/kettle", "observation")
    assert ds.obs_dim == 11 and ds.num_episodes == 3
    # replay episode 0's actions in the wrapped live environment: the same rows, in the same order
    env = make_env(DICT_ENV, observation_map=m)
    assert env.observation_space.shape == (11,)
    ep = ds.episode(0)
    obs, _ = env.reset(seed=100)
    rows = [obs]
    for a in ep["actions"][:-1]:
        obs, *_ = env.step(a)
        rows.append(obs)
    np.testing.assert_allclose(np.stack(rows), ep["observations"], rtol=0, atol=1e-6)
    # ... and the rows are gymnasium's own flatten of the dict
    raw = gym.make(DICT_ENV)
    first, _ = raw.reset(seed=100)
    np.testing.assert_allclose(ep["observations"][0], spaces.flatten(raw.observation_space, first), atol=1e-6)
    check_compatible(ds, DICT_ENV)


def test_evaluate_maps_the_live_environment_with_the_policys_map():
    m = ObservationMap(keys=("observation", "desired_goal/kettle"), key_sizes=(4, 3))
    policy = Recorder(m)
    (res,) = evaluate(policy, DICT_ENV, episodes=2, num_envs=2, seed=5, progress=False)
    assert res.lengths.tolist() == [12, 12]
    # a one-environment replay of episode 0 with the same actions, mapped by hand here for the check
    env = gym.make(DICT_ENV)
    obs, _ = env.reset(seed=5)
    rng = np.random.default_rng(0)
    for t in range(12):
        expected = np.concatenate([obs["observation"], obs["desired_goal"]["kettle"]]).astype(np.float32)
        np.testing.assert_array_equal(policy.seen[t][0], expected)
        actions = rng.uniform(-1, 1, (2, 2)).astype(np.float32)
        obs, *_ = env.step(actions[0])


def test_dict_environment_without_a_map_is_refused():
    with pytest.raises(ValueError, match="dict observations .* no dict layout"):
        evaluate(Recorder(), DICT_ENV, episodes=1, num_envs=1, progress=False)


def test_observation_indices_from_hdf5_reach_the_rollout(tmp_path, make_data):
    data = make_data(obs_dim=2)
    path = write_d4rl_hdf5(tmp_path / "sel.hdf5", data, metadata={"observation_indices": [3, 0], "gym_id": FLAT_ENV})
    ds = load_dataset(path)
    assert ds.observation_map == ObservationMap(indices=(3, 0))
    assert ds.metadata["observation_indices"] == [3, 0]
    check_compatible(ds, FLAT_ENV)
    policy = Recorder(ds.observation_map)
    evaluate(policy, FLAT_ENV, episodes=1, num_envs=1, seed=2, progress=False)
    env = gym.make(FLAT_ENV)
    obs, _ = env.reset(seed=2)
    np.testing.assert_array_equal(policy.seen[0][0], obs[[3, 0]].astype(np.float32))


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"observation_indices": [0, 0]}, "twice"),
        ({"observation_indices": [0, 1, 2]}, "2 columns but .* gives 3"),
        ({"observation_indices": [0, 9], "observation_size": 5}, "out of range"),
    ],
)
def test_bad_observation_indices_in_a_file(tmp_path, make_data, meta, message):
    import h5py

    path = tmp_path / "bad.hdf5"
    write_d4rl_hdf5(path, make_data(obs_dim=2))
    with h5py.File(path, "a") as f:
        for k, v in meta.items():
            f.attrs[k] = np.asarray(v)
    with pytest.raises(ValueError, match=message):
        load_dataset(path)


def test_indices_that_do_not_fit_the_environment(tmp_path, make_data):
    data = make_data(obs_dim=2)
    ds = TrajectoryDataset.from_arrays(
        **{k: data[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts")},
        metadata={"observation_indices": [0, 7]},
    )
    with pytest.raises(ValueError, match="entry 7 is out of range for .*size 5"):
        check_compatible(ds, FLAT_ENV)
    sized = TrajectoryDataset.from_arrays(
        **{k: data[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts")},
        metadata={"observation_indices": [0, 1], "observation_size": 11},
    )
    with pytest.raises(ValueError, match="size 11 but .*size 5"):
        check_compatible(sized, FLAT_ENV)


def test_wrapper_space_and_dtype():
    env = wrap_env(gym.make(DICT_ENV), ObservationMap(keys=("observation",), key_sizes=(4,), indices=(3, 1)))
    obs, _ = env.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == (2,) and env.observation_space.contains(obs)


# ---------------------------------------------------------------------- the checkpoint carries the map
@pytest.mark.parametrize("algo", ["bc", "dt"])
def test_map_survives_save_load_and_drives_the_rollout(tmp_path, algo):
    from flowrl.agents import BCConfig, DecisionTransformerConfig, load_agent, make_agent

    _collect_minari("flowrl/goalpoint/random-v0")
    ds = load_dataset("flowrl/goalpoint/random-v0")
    cfg = BCConfig(hidden=8) if algo == "bc" else DecisionTransformerConfig(dim=16, depth=1, context=4)
    agent = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=0, env_name=ds.env_name)
    agent.fit_normalization(ds)
    assert agent.observation_map == ds.observation_map
    agent.save(tmp_path / "agent")
    saved = json.loads((tmp_path / "agent" / "agent.json").read_text())
    assert saved["observation"]["keys"] == list(ds.observation_map.keys)
    loaded = load_agent(tmp_path / "agent")
    assert loaded.observation_map == ds.observation_map
    policy = loaded.make_policy()
    assert policy.observation_map == ds.observation_map
    # the rollout feeds the policy exactly the loader's rows: its first action equals the agent's action on
    # the dataset's first row (episode 0 starts from the same seed)
    (res,) = evaluate(
        policy,
        DICT_ENV,
        episodes=1,
        num_envs=1,
        seed=100,
        target_returns=[None if algo == "bc" else -5.0],
        progress=False,
    )
    assert res.lengths.tolist() == [12]
    first = ds.episode(0)["observations"][:1]
    if algo == "bc":
        expected = loaded.act(first)[0]
        probe = loaded.make_policy()
        probe.reset(np.ones(1, bool), None)
    else:
        expected = loaded.act(first, np.array([-5.0]))
        probe = loaded.make_policy()
        probe.reset(np.ones(1, bool), -5.0)
    env = make_env(DICT_ENV, observation_map=loaded.observation_map)
    obs, _ = env.reset(seed=100)
    np.testing.assert_allclose(probe.act(obs[None], np.zeros(1, np.float32))[0], expected, atol=1e-5)


def test_cli_evaluate_refuses_a_map_that_does_not_fit(tmp_path, make_data, capsys):
    from flowrl.agents import BCConfig, make_agent
    from flowrl.scripts.cli import main

    data = make_data(obs_dim=2)
    ds = TrajectoryDataset.from_arrays(
        **{k: data[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts")},
        metadata={"observation_indices": [0, 1], "observation_size": 11},
    )
    agent = make_agent(BCConfig(hidden=8), ds.obs_dim, ds.act_dim, seed=0)
    agent.fit_normalization(ds)
    agent.save(tmp_path / "agent")
    code = main(["evaluate", str(tmp_path / "agent"), "--env", FLAT_ENV, "--episodes", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "size 11" in err and len(err.strip().splitlines()) == 1
