import numpy as np
import pytest
from flowrl.envs import TrajectoryDataset

from flowrl.errors import InputError

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


def _flags(n, terminal_at=(), timeout_at=()):
    t = np.zeros(n, bool)
    o = np.zeros(n, bool)
    t[list(terminal_at)] = True
    o[list(timeout_at)] = True
    return t, o


def _ds(terminals, timeouts, rewards=None, obs_dim=2):
    n = len(terminals)
    rewards = np.arange(1, n + 1, dtype=np.float32) if rewards is None else rewards
    obs = np.arange(n * obs_dim, dtype=np.float32).reshape(n, obs_dim)
    return TrajectoryDataset.from_arrays(obs, np.zeros((n, 1)), rewards, terminals, timeouts)


@pytest.mark.parametrize(
    "n, terminal_at, timeout_at, starts, lengths",
    [
        pytest.param(6, [5], [], [0], [6], id="one-terminal-at-end"),
        pytest.param(6, [], [5], [0], [6], id="one-timeout-at-end"),
        pytest.param(6, [1], [3], [0, 2, 4], [2, 2, 2], id="mixed-flags-trailing"),
        pytest.param(6, [], [], [0], [6], id="no-flags-one-trailing-episode"),
        pytest.param(6, [0, 1, 2], [], [0, 1, 2, 3], [1, 1, 1, 3], id="length-one-episodes"),
        pytest.param(5, [2], [2], [0, 3], [3, 2], id="both-flags-same-row"),
        pytest.param(4, [0], [3], [0, 1], [1, 3], id="timeout-closes-last"),
    ],
)
def test_episode_splitting(n, terminal_at, timeout_at, starts, lengths):
    ds = _ds(*_flags(n, terminal_at, timeout_at))
    assert ds.episode_starts.tolist() == starts
    assert ds.episode_lengths.tolist() == lengths
    assert ds.episode_starts.dtype == np.int64 and ds.episode_lengths.dtype == np.int64
    assert ds.num_episodes == len(starts) and ds.num_transitions == n


def test_returns_and_returns_to_go_match_per_episode_loop(make_data):
    a = make_data(lengths=(5, 3, 7, 1, 4), trailing=True)
    ds = TrajectoryDataset.from_arrays(**{k: v for k, v in a.items() if k != "next_observations"})
    for e in range(ds.num_episodes):
        s, n = ds.episode_starts[e], ds.episode_lengths[e]
        r = a["rewards"][s : s + n].astype(np.float64)
        assert ds.episode_returns[e] == pytest.approx(r.sum(), abs=1e-9)
        ref = np.array([r[t:].sum() for t in range(n)])
        np.testing.assert_allclose(ds.returns_to_go[s : s + n], ref, rtol=1e-6, atol=1e-6)
    assert ds.episode_returns.dtype == np.float64 and ds.returns_to_go.dtype == np.float32


def test_dtypes_stats_and_no_copy(make_data):
    a = make_data()
    ds = TrajectoryDataset.from_arrays(a["observations"], a["actions"], a["rewards"], a["terminals"], a["timeouts"])
    assert ds.observations is a["observations"]  # float32 contiguous input is kept, not copied
    assert ds.observations.dtype == ds.actions.dtype == ds.rewards.dtype == np.float32
    assert ds.terminals.dtype == ds.timeouts.dtype == np.bool_
    np.testing.assert_allclose(ds.state_mean, a["observations"].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ds.state_std, a["observations"].std(0) + 1e-6, rtol=1e-5)
    assert ds.state_mean.dtype == ds.state_std.dtype == np.float32
    assert (ds.obs_dim, ds.act_dim) == (3, 2)
    assert ds.final_observations is None and ds.next_observations() is None


def test_constant_observation_std_is_floored():
    ds = _ds(*_flags(4, [3]))
    ds2 = TrajectoryDataset.from_arrays(np.ones((4, 2)), np.zeros((4, 1)), np.zeros(4), *_flags(4, [3]))
    assert np.all(ds2.state_std > 0) and np.all(ds.state_std > 0)


def test_next_observations_reconstructed_from_final(make_data):
    a = make_data(trailing=True)
    ds = TrajectoryDataset.from_arrays(
        a["observations"],
        a["actions"],
        a["rewards"],
        a["terminals"],
        a["timeouts"],
        next_observations=a["next_observations"],
    )
    assert ds.final_observations.shape == (ds.num_episodes, ds.obs_dim)
    np.testing.assert_array_equal(ds.next_observations(), a["next_observations"])


def test_numeric_flags_and_column_rewards():
    t, o = _flags(4, [1], [3])
    ds = TrajectoryDataset.from_arrays(
        np.zeros((4, 2)), np.zeros(4), np.ones((4, 1)), t.astype(np.float32), o.astype(int)
    )
    assert ds.episode_lengths.tolist() == [2, 2]
    assert ds.rewards.shape == (4,) and ds.actions.shape == (4, 1)


def test_summary_and_metadata(make_data):
    a = make_data(lengths=(4, 6))
    ds = TrajectoryDataset.from_arrays(
        a["observations"],
        a["actions"],
        a["rewards"],
        a["terminals"],
        a["timeouts"],
        {"env_id": "Hopper-v5", "source": "mem"},
    )
    s = ds.summary()
    assert ds.env_name == "Hopper-v5" and s["env"] == "Hopper-v5"
    # reference scores filled in from the env spec
    assert (s["ref_min_score"], s["ref_max_score"]) == (-20.272305, 3234.3)
    assert s["transitions"] == 10 and s["episodes"] == 2
    assert (s["length_min"], s["length_max"], s["length_mean"]) == (4, 6, 5.0)
    ret = ds.episode_returns
    assert s["return_mean"] == pytest.approx(ret.mean()) and s["return_max"] == pytest.approx(ret.max())
    assert s["normalized_return_mean"] == pytest.approx(np.mean(100 * (ret + 20.272305) / (3234.3 + 20.272305)))
    assert s["source"] == "mem"
    plain = TrajectoryDataset.from_arrays(*(a[k] for k in KEYS))
    assert plain.env_name is None and plain.summary()["normalized_return_mean"] is None


def test_episode_views(make_data):
    a = make_data(lengths=(2, 3))
    ds = TrajectoryDataset.from_arrays(*(a[k] for k in KEYS))
    ep = ds.episode(1)
    np.testing.assert_array_equal(ep["observations"], a["observations"][2:5])
    assert np.shares_memory(ep["observations"], ds.observations)


@pytest.mark.parametrize(
    "change, message",
    [
        pytest.param({"actions": np.zeros((9, 2))}, r"mismatched lengths.*actions=9", id="mismatched-lengths"),
        pytest.param({"rewards": np.zeros(11)}, r"mismatched lengths.*rewards=11", id="mismatched-rewards"),
        pytest.param({"observations": "nan"}, r"observations.*NaN.*row 4", id="nan-observation"),
        pytest.param({"rewards": "inf"}, r"rewards.*inf", id="inf-reward"),
        pytest.param({"actions": "nan"}, r"actions.*NaN", id="nan-action"),
        pytest.param("empty", r"empty dataset", id="empty"),
        pytest.param({"observations": np.zeros((10, 2, 2))}, r"observations.*\[N, dim\]", id="bad-rank"),
        pytest.param({"terminals": None}, r"missing array 'terminals'", id="missing"),
        pytest.param({"terminals": np.array(["a"] * 10)}, r"terminals.*bool", id="string-flags"),
    ],
)
def test_bad_input(make_data, change, message):
    a = make_data(lengths=(4, 6), with_next=False)
    if change == "empty":
        a = {k: v[:0] for k, v in a.items()}
    else:
        for k, v in change.items():
            if isinstance(v, str):
                a[k] = a[k].copy()
                a[k].reshape(len(a[k]), -1)[4, 0] = np.nan if v == "nan" else np.inf
            else:
                a[k] = v
    with pytest.raises(ValueError, match=message):
        TrajectoryDataset.from_arrays(**a, metadata={"source": "here.hdf5"})
    if change != "empty" and "missing" not in message:
        with pytest.raises(ValueError, match="here.hdf5"):
            TrajectoryDataset.from_arrays(**a, metadata={"source": "here.hdf5"})


def test_direct_construction_is_refused():
    with pytest.raises(TypeError):
        TrajectoryDataset()


# ---------------------------------------------------------------------- bad files name themselves (issue 15)
def test_returns_to_go_that_overflow_float32_are_refused():
    n = 4
    t, o = _flags(n, timeout_at=[3])
    with pytest.raises(InputError, match=r"returns-to-go overflow: the rewards of an episode sum beyond float32"):
        _ds(t, o, rewards=np.full(n, 3e38, np.float32))


def test_an_hdf5_key_that_is_a_group_is_named_as_such(tmp_path):
    import h5py
    from flowrl.envs import load_dataset

    path = tmp_path / "grouped.hdf5"
    with h5py.File(path, "w") as f:
        f.create_group("observations").create_dataset("x", data=np.zeros((3, 2)))
        for k in KEYS[1:]:
            f.create_dataset(k, data=np.zeros(3))
    with pytest.raises(InputError) as e:
        load_dataset(path)
    assert str(e.value) == f"{path}: 'observations' must be an array (an HDF5 dataset), but it is a group"


def test_minari_ids_cannot_reach_outside_the_minari_root(tmp_path, monkeypatch):
    """An id is a name: ``..`` and absolute paths are refused, even where a dataset exists at that path."""
    from flowrl.envs import load_dataset, write_minari_dataset

    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    t, o = _flags(4, timeout_at=[3])
    arrays = dict(observations=np.zeros((4, 2)), actions=np.zeros((4, 1)), rewards=np.ones(4))
    write_minari_dataset("outside/x/medium-v0", **arrays, terminals=t, timeouts=o, env_id=None, root=tmp_path)
    assert (tmp_path / "outside" / "x" / "medium-v0").is_dir()
    for dataset_id in ("../outside/x/medium-v0", "mujoco/../../outside/x/medium-v0", "../outside/x/medium"):
        with pytest.raises(InputError, match="malformed Minari dataset id"):
            load_dataset(dataset_id)
