"""Context windows and transitions against slow per-sample references."""

import numpy as np
import pytest
from flowrl.envs import ContextSampler, TrajectoryDataset, TransitionSampler

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")


@pytest.fixture
def dataset(make_data):
    a = make_data(lengths=(5, 3, 7, 1, 4, 12), obs_dim=4, act_dim=2, trailing=True)
    return TrajectoryDataset.from_arrays(*(a[k] for k in KEYS), next_observations=a["next_observations"])


def reference_window(ds, e, si, K, scale, normalize):
    """One window the slow, obvious way: slice the episode, compute returns-to-go by a reversed loop,
    right-pad with zeros."""
    s0, n = int(ds.episode_starts[e]), int(ds.episode_lengths[e])
    obs = ds.observations[s0 : s0 + n].astype(np.float64)
    act = ds.actions[s0 : s0 + n]
    rew = ds.rewards[s0 : s0 + n].astype(np.float64)
    rtg = np.zeros(n)
    acc = 0.0
    for t in reversed(range(n)):
        acc += rew[t]
        rtg[t] = acc
    L = min(K, n - si)
    out = {
        "states": np.zeros((K, ds.obs_dim)),
        "actions": np.zeros((K, ds.act_dim)),
        "rewards": np.zeros((K, 1)),
        "returns_to_go": np.zeros((K, 1)),
        "timesteps": np.zeros(K, np.int64),
        "mask": np.zeros(K),
    }
    s = obs[si : si + L]
    out["states"][:L] = (s - ds.state_mean) / ds.state_std if normalize else s
    out["actions"][:L] = act[si : si + L]
    out["rewards"][:L, 0] = rew[si : si + L]
    out["returns_to_go"][:L, 0] = rtg[si : si + L] * scale
    out["timesteps"][:L] = np.arange(si, si + L)
    out["mask"][:L] = 1
    return out


@pytest.mark.parametrize("K", [1, 4, 20], ids=lambda k: f"K{k}")
@pytest.mark.parametrize("normalize", [True, False], ids=["norm", "raw"])
def test_windows_match_per_sample_reference(dataset, K, normalize):
    ds = dataset
    sampler = ContextSampler(ds, K, reward_scale=1e-2, seed=0, normalize_states=normalize)
    ep = np.concatenate([np.full(n, e) for e, n in enumerate(ds.episode_lengths)])
    st = np.concatenate([np.arange(n) for n in ds.episode_lengths])  # every start of every episode
    batch = sampler.windows(ep, st)
    B = len(ep)
    assert batch.states.shape == (B, K, 4) and batch.actions.shape == (B, K, 2)
    assert batch.rewards.shape == batch.returns_to_go.shape == (B, K, 1)
    assert batch.timesteps.shape == batch.mask.shape == (B, K)
    assert batch.states.dtype == batch.actions.dtype == batch.rewards.dtype == np.float32
    assert batch.returns_to_go.dtype == batch.mask.dtype == np.float32 and batch.timesteps.dtype == np.int64
    for b in range(B):
        ref = reference_window(ds, ep[b], st[b], K, 1e-2, normalize)
        for name, want in ref.items():
            np.testing.assert_allclose(getattr(batch, name)[b], want, rtol=1e-5, atol=1e-6, err_msg=f"{name} b={b}")


def test_right_padding_convention(dataset):
    batch = ContextSampler(dataset, 6, reward_scale=1.0, seed=0).windows([0], [3])  # episode 0 has 5 steps
    np.testing.assert_array_equal(batch.mask[0], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.timesteps[0], [3, 4, 0, 0, 0, 0])
    assert np.all(batch.states[0, 2:] == 0) and np.all(batch.actions[0, 2:] == 0)
    assert np.all(batch.returns_to_go[0, 2:] == 0) and np.all(batch.rewards[0, 2:] == 0)
    # the last real token's return-to-go is its own reward (the episode ends there)
    assert batch.returns_to_go[0, 1, 0] == pytest.approx(batch.rewards[0, 1, 0])


def test_sample_is_deterministic_and_matches_windows(dataset):
    a = ContextSampler(dataset, 5, reward_scale=1e-3, seed=7)
    b = ContextSampler(dataset, 5, reward_scale=1e-3, seed=7)
    c = ContextSampler(dataset, 5, reward_scale=1e-3, seed=8)
    x, y, z = a.sample(64), b.sample(64), c.sample(64)
    for f in x._fields:
        np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    assert not np.array_equal(x.states, z.states)
    # every sampled window equals the deterministic window at its (episode, start)
    ep, st = _episode_and_start(dataset, a, x)
    w = a.windows(ep, st)
    for f in x._fields:
        np.testing.assert_array_equal(getattr(x, f), getattr(w, f))


def _episode_and_start(ds, sampler, batch):
    """Recover each window's episode and start step from its first (real) state row."""
    states = batch.states[:, 0] * ds.state_std + ds.state_mean if sampler.normalize_states else batch.states[:, 0]
    dist = np.abs(ds.observations[None] - states[:, None]).max(-1)  # [B, N]
    rows = dist.argmin(1)
    ep = np.searchsorted(ds.episode_starts, rows, side="right") - 1
    return ep, rows - ds.episode_starts[ep]


def test_episode_choice_is_length_proportional_and_starts_uniform(dataset):
    ds = dataset
    sampler = ContextSampler(ds, 3, reward_scale=1.0, seed=0, normalize_states=False)
    batch = sampler.sample(60_000)
    ep, st = _episode_and_start(ds, sampler, batch)
    freq = np.bincount(ep, minlength=ds.num_episodes) / len(ep)
    np.testing.assert_allclose(freq, ds.episode_lengths / ds.num_transitions, atol=0.01)
    np.testing.assert_array_equal(batch.timesteps[:, 0], st)
    # start steps uniform within the longest episode
    longest = int(np.argmax(ds.episode_lengths))
    starts = batch.timesteps[ep == longest, 0]
    counts = np.bincount(starts, minlength=ds.episode_lengths[longest])
    assert counts.min() > 0.7 * counts.mean()


def test_end_anchored_windows_end_at_a_uniform_transition(dataset):
    """anchor="end": each window is the (up to) K steps ending at a uniformly drawn transition, cut at the
    episode start and right-padded, with the values of the per-sample reference at that start."""
    ds, K = dataset, 4
    sampler = ContextSampler(ds, K, reward_scale=1e-2, seed=0, normalize_states=False, anchor="end")
    batch = sampler.sample(20_000)
    ep, st = _episode_and_start(ds, sampler, batch)
    length = batch.mask.sum(1).astype(np.int64)
    last = st + length - 1  # the drawn step: the window's last real one
    assert np.all(length == np.minimum(last + 1, K))  # full windows unless the episode start cuts them
    rows = ds.episode_starts[ep] + last
    counts = np.bincount(rows, minlength=ds.num_transitions)
    assert counts.min() > 0.7 * counts.mean()  # every transition ends windows equally often
    for b in range(200):
        ref = reference_window(ds, ep[b], st[b], K, 1e-2, False)
        real = int(length[b])
        for name, want in ref.items():
            got = getattr(batch, name)[b]
            want = np.array(want)
            want[real:] = 0  # the reference runs on to the episode end; this window stops at the drawn step
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"{name} b={b}")
    # the first steps of an episode come with their whole history: step 2 of the longest episode sits at
    # position 2 of a window starting at step 0
    longest = int(np.argmax(ds.episode_lengths))
    early = (ep == longest) & (last == 2)
    assert early.any() and np.all(st[early] == 0)
    with pytest.raises(ValueError, match="anchor"):
        ContextSampler(ds, K, reward_scale=1.0, seed=0, anchor="middle")


def test_windows_validate_indices(dataset):
    s = ContextSampler(dataset, 4, reward_scale=1.0, seed=0)
    with pytest.raises(ValueError, match="episode index out of range"):
        s.windows([99], [0])
    with pytest.raises(ValueError, match="start index out of range"):
        s.windows([0], [5])
    with pytest.raises(ValueError, match="context must be >= 1"):
        ContextSampler(dataset, 0, reward_scale=1.0, seed=0)


def test_transition_sampler_next_states(dataset, make_data):
    ds = dataset
    t = TransitionSampler(ds, seed=0, normalize_states=False)
    rows = np.arange(ds.num_transitions)
    batch = t.transitions(rows)
    np.testing.assert_array_equal(batch.next_states, ds.next_observations())
    np.testing.assert_array_equal(batch.states, ds.observations)
    np.testing.assert_array_equal(batch.terminals, ds.terminals.astype(np.float32))
    s = TransitionSampler(ds, seed=1).sample(32)
    assert s.states.shape == (32, 4) and s.actions.shape == (32, 2) and s.rewards.shape == (32,)
    # normalisation with the dataset's statistics, on observations far from mean 0 and std 1 (raw states fail)
    a = {k: v.copy() for k, v in make_data(lengths=(5, 3, 7), obs_dim=4, act_dim=2).items()}
    a["observations"] = a["observations"] * 5.0 + 3.0
    a["next_observations"] = a["next_observations"] * 5.0 + 3.0
    shifted = TrajectoryDataset.from_arrays(*(a[k] for k in KEYS), next_observations=a["next_observations"])
    rows = np.arange(shifted.num_transitions)
    norm = TransitionSampler(shifted, seed=0).transitions(rows)
    np.testing.assert_allclose(norm.states, (shifted.observations - shifted.state_mean) / shifted.state_std, rtol=1e-6)
    want_next = (shifted.next_observations() - shifted.state_mean) / shifted.state_std
    np.testing.assert_allclose(norm.next_states, want_next, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(norm.states.mean(0), 0.0, atol=1e-5)
    no_final = TrajectoryDataset.from_arrays(*(getattr(ds, k) for k in KEYS))
    assert TransitionSampler(no_final, seed=0).sample(4).next_states is None
