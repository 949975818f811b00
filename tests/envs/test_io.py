"""On-disk formats and ``load_dataset`` resolution: round trips, names, downloads, bad files."""

import functools
import http.server
import os
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from flowrl.envs import (
    TrajectoryDataset,
    load_dataset,
    minari_root,
    write_d4rl_hdf5,
    write_minari_dataset,
    write_npz,
)

KEYS = ("observations", "actions", "rewards", "terminals", "timeouts")
REF = {"ref_min_score": -20.272305, "ref_max_score": 3234.3}


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove nothing was written or deleted)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_same(a: TrajectoryDataset, b: TrajectoryDataset) -> None:
    for name in (
        *KEYS,
        "episode_starts",
        "episode_lengths",
        "episode_returns",
        "returns_to_go",
        "state_mean",
        "state_std",
        "final_observations",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("trailing", [False, True], ids=["all-flagged", "trailing-unflagged"])
def test_three_formats_load_identically(tmp_path, make_data, trailing):
    a = make_data(lengths=(5, 3, 7, 1, 4), trailing=trailing)
    ref = TrajectoryDataset.from_arrays(*(a[k] for k in KEYS), next_observations=a["next_observations"])
    h5 = write_d4rl_hdf5(tmp_path / "d.hdf5", a, metadata={"env_id": "Hopper-v5", **REF})
    npz = write_npz(tmp_path / "d.npz", a, metadata={"env_id": "Hopper-v5", **REF})
    mdir = write_minari_dataset("test/hopper/tiny-v0", **a, env_id=None, metadata={"level": "tiny", **REF})
    loaded = {
        "hdf5": load_dataset(str(h5)),
        "npz": load_dataset(npz),
        "minari": load_dataset(str(mdir)),
        "minari-id": load_dataset("test/hopper/tiny-v0"),
        "minari-id-noversion": load_dataset("test/hopper/tiny"),
    }
    for fmt, ds in loaded.items():
        _assert_same(ref, ds)
        assert ds.metadata["ref_min_score"] == REF["ref_min_score"], fmt
        assert ds.metadata["ref_max_score"] == REF["ref_max_score"], fmt
    assert loaded["hdf5"].metadata["format"] == "d4rl-hdf5" and loaded["hdf5"].env_name == "Hopper-v5"
    assert loaded["minari"].metadata["level"] == "tiny"  # extra metadata survives the Minari round trip
    assert loaded["minari"].metadata["source"] == str(mdir)


def test_minari_written_dataset_is_a_real_minari_dataset(make_data):
    import minari

    a = make_data(lengths=(4, 6), obs_dim=11, act_dim=3)
    path = write_minari_dataset("flowrl/hopper/tiny-v0", **a, env_id="Hopper-v5", metadata=dict(REF))
    assert path == minari_root() / "flowrl/hopper/tiny-v0"
    m = minari.load_dataset("flowrl/hopper/tiny-v0")
    assert (m.total_episodes, m.total_steps) == (2, 10)
    ep = m[1]
    np.testing.assert_array_equal(ep.observations[:-1], a["observations"][4:])
    np.testing.assert_array_equal(ep.observations[-1], a["next_observations"][-1])
    assert m.spec.env_spec.id == "Hopper-v5"
    assert minari.get_normalized_score(m, np.array([3234.3])) == pytest.approx(1.0)
    # a flowrl-collected name maps to the flowrl namespace
    ds = load_dataset("hopper-tiny")
    assert ds.num_transitions == 10 and ds.env_name == "Hopper-v5"
    # no temporary folders left behind in the root
    assert not [p for p in minari_root().iterdir() if p.name.startswith(".")]


def test_minari_refuses_existing_id_unless_overwrite(make_data):
    a = make_data()
    write_minari_dataset("test/x/a-v0", **a, env_id=None, metadata={"n": 1})
    before = _files(minari_root())
    with pytest.raises(FileExistsError, match="already exists.*overwrite=True"):
        write_minari_dataset("test/x/a-v0", **a, env_id=None, metadata={"n": 2})
    assert _files(minari_root()) == before
    b = make_data(lengths=(2, 2), seed=1)
    write_minari_dataset("test/x/a-v0", **b, env_id=None, metadata={"n": 3}, overwrite=True)
    ds = load_dataset("test/x/a-v0")
    assert ds.num_transitions == 4 and ds.metadata["n"] == 3


def test_minari_write_to_a_relative_root(make_data, monkeypatch, tmp_path):
    """MINARI_DATASETS_PATH=relative/path flowrl collect ... (the docs' collect example) writes and loads."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", "runs/minari")
    path = write_minari_dataset("test/x/rel-v0", **make_data(lengths=(3, 2)), env_id=None, metadata={})
    assert path == tmp_path / "runs/minari/test/x/rel-v0" and load_dataset("test/x/rel-v0").num_transitions == 5


def test_minari_write_killed_midway_leaves_nothing(make_data, monkeypatch):
    import minari

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the process were interrupted while Minari writes

    monkeypatch.setattr(minari, "create_dataset_from_buffers", crash)
    with pytest.raises(KeyboardInterrupt):
        write_minari_dataset("test/x/b-v0", **make_data(), env_id=None, metadata={})
    assert not (minari_root() / "test/x/b-v0").exists()
    assert not [p for p in minari_root().rglob("*") if p.name.startswith(".flowrl-tmp")]
    with pytest.raises(ValueError, match="not in the local Minari root"):
        load_dataset("test/x/b-v0")


def test_minari_write_validates_before_touching_disk(make_data):
    a = make_data()
    a["rewards"] = a["rewards"].copy()
    a["rewards"][2] = np.nan
    with pytest.raises(ValueError, match="rewards.*NaN"):
        write_minari_dataset("test/x/c-v0", **a, env_id=None, metadata={})
    with pytest.raises(ValueError, match="not JSON-serializable"):
        write_minari_dataset("test/x/c-v0", **make_data(), env_id=None, metadata={"bad": object()})
    with pytest.raises(ValueError, match="malformed Minari dataset id"):
        write_minari_dataset("no version", **make_data(), env_id=None, metadata={})
    assert not minari_root().exists() or not (minari_root() / "test/x/c-v0").exists()


def test_d4rl_name_from_cache_and_flowrl_fallback(make_data):
    cache = Path(os.environ["D4RL_DATASET_DIR"])
    cache.mkdir(parents=True)
    a = make_data()
    write_d4rl_hdf5(cache / "hopper_medium_replay-v2.hdf5", a)  # D4RL's own cache file name
    ds = load_dataset("hopper-medium-replay-v2")
    assert ds.num_transitions == len(a["rewards"])
    assert ds.env_name == "hopper" and ds.metadata["ref_max_score"] == 3234.3  # from the name
    # a D4RL-shaped name that is not cached falls back to a flowrl Minari dataset of that version
    write_minari_dataset("flowrl/walker2d/medium-v0", **a, env_id=None, metadata={})
    assert load_dataset("walker2d-medium-v0").num_transitions == len(a["rewards"])


def test_unknown_names_list_local_candidates(make_data):
    cache = Path(os.environ["D4RL_DATASET_DIR"])
    cache.mkdir(parents=True)
    write_d4rl_hdf5(cache / "hopper_expert-v2.hdf5", make_data())
    write_minari_dataset("flowrl/hopper/medium-v0", **make_data(), env_id=None, metadata={})
    before = {**_files(cache), **_files(minari_root())}
    for name, first in [
        ("hopper-foo", "no local dataset 'hopper-foo'"),
        ("walker2d-medium-v2", "not in the D4RL cache.*download=True"),
        ("mujoco/hopper/medium-v0", "not in the local Minari root"),
        ("what is this", "unknown dataset"),
    ]:
        with pytest.raises(ValueError, match=first) as info:
            load_dataset(name)
        msg = str(info.value)
        assert "hopper-medium" in msg and "flowrl/hopper/medium-v0" in msg and "hopper-expert-v2" in msg
    assert {**_files(cache), **_files(minari_root())} == before
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset("missing/file.hdf5")


@pytest.fixture
def http_server(tmp_path):
    """A loopback HTTP server serving ``tmp_path/www``; yields (base_url, folder, request log)."""
    www = tmp_path / "www"
    www.mkdir()
    log = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, fmt, *args):
            log.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/d4rl", www, log
    finally:
        server.shutdown()
        server.server_close()


def test_opt_in_d4rl_download_from_loopback_server(http_server, make_data, monkeypatch):
    base, www, log = http_server
    (www / "d4rl").mkdir()
    a = make_data(lengths=(6, 4))
    write_d4rl_hdf5(www / "d4rl" / "hopper_medium-v2.hdf5", a, metadata=REF)
    cache = Path(os.environ["D4RL_DATASET_DIR"])

    with pytest.raises(ValueError, match="download=True"):  # offline by default: no request is made
        load_dataset("hopper-medium-v2", base_url=base)
    assert log == [] and not cache.exists()

    ds = load_dataset("hopper-medium-v2", download=True, base_url=base)
    assert log == ["/d4rl/hopper_medium-v2.hdf5"]
    assert ds.num_transitions == 10 and ds.metadata["ref_max_score"] == REF["ref_max_score"]
    assert sorted(p.name for p in cache.iterdir()) == ["hopper_medium-v2.hdf5"]  # no partial files left

    # cached now: loads without the network; the base URL may also come from the environment
    assert load_dataset("hopper-medium-v2").num_transitions == 10
    monkeypatch.setenv("FLOWRL_D4RL_BASE_URL", base)
    assert load_dataset("hopper-medium-v2", download=True).num_transitions == 10  # cache hit, no request
    assert len(log) == 1


def test_failed_download_leaves_nothing(http_server):
    base, www, log = http_server
    (www / "d4rl").mkdir()
    (www / "d4rl" / "hopper_expert-v2.hdf5").write_bytes(b"this is not hdf5")
    cache = Path(os.environ["D4RL_DATASET_DIR"])
    with pytest.raises(ValueError, match="HTTP 404"):
        load_dataset("hopper-random-v2", download=True, base_url=base)
    with pytest.raises(ValueError, match="not a valid D4RL dataset.*not a readable HDF5"):
        load_dataset("hopper-expert-v2", download=True, base_url=base)
    assert not cache.exists() or list(cache.iterdir()) == []


def _save_raw(path: Path, arrays: dict) -> None:
    """Write arrays as-is (no validation), as a third-party tool might."""
    if path.suffix == ".npz":
        np.savez(path, **arrays)
    else:
        with h5py.File(path, "w") as f:
            for k, v in arrays.items():
                f[k] = v


@pytest.mark.parametrize("suffix", [".hdf5", ".npz"])
def test_missing_keys_named(tmp_path, make_data, suffix):
    path = tmp_path / f"bad{suffix}"
    _save_raw(path, {k: v for k, v in make_data().items() if k not in ("timeouts", "actions")})
    before = path.read_bytes()
    with pytest.raises(ValueError, match=rf"{path}.*missing required key\(s\) 'actions', 'timeouts'"):
        load_dataset(path)
    assert path.read_bytes() == before


@pytest.mark.parametrize("suffix", [".hdf5", ".npz"])
@pytest.mark.parametrize(
    "problem, message",
    [
        ("short-actions", r"mismatched lengths.*actions=19"),
        ("inf", r"observations.*inf"),
        ("nan-next", r"next_observations.*NaN"),
    ],
)
def test_bad_values_in_files_named(tmp_path, make_data, suffix, problem, message):
    a = make_data()
    if problem == "short-actions":
        a["actions"] = a["actions"][:-1]
    elif problem == "inf":
        a["observations"][3, 1] = np.inf
    else:
        a["next_observations"][-1, 0] = np.nan
    path = tmp_path / f"bad{suffix}"
    _save_raw(path, a)
    with pytest.raises(ValueError, match=rf"{path}.*{message}"):
        load_dataset(path)


def test_empty_file_rejected(tmp_path, make_data):
    a = {k: v[:0] for k, v in make_data().items()}
    path = tmp_path / "empty.npz"
    np.savez(path, **a)
    with pytest.raises(ValueError, match="empty.npz.*empty dataset"):
        load_dataset(path)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_hdf5_named_and_untouched(tmp_path, make_data, damage):
    good = write_d4rl_hdf5(tmp_path / "good.hdf5", make_data(lengths=(300, 200)), compression=None)
    path = tmp_path / "corrupt.hdf5"
    data = good.read_bytes()
    path.write_bytes(b"\x00garbage" * 100 if damage == "garbage" else data[: len(data) // 2])
    before = _files(tmp_path)
    with pytest.raises(ValueError, match=rf"{path}.*(not a readable HDF5|corrupt)"):
        load_dataset(str(path))
    assert _files(tmp_path) == before


def test_corrupt_minari_named(make_data):
    path = write_minari_dataset("test/x/d-v0", **make_data(), env_id=None, metadata={})
    main = path / "data" / "main_data.hdf5"
    main.write_bytes(main.read_bytes()[:300])
    with pytest.raises(ValueError, match=rf"{main}.*(not a readable HDF5|corrupt)"):
        load_dataset("test/x/d-v0")
    (path / "data" / "metadata.json").write_text("{not json")
    with pytest.raises(ValueError, match="metadata.json.*unreadable Minari metadata"):
        load_dataset(str(path))


def test_minari_dict_observations_after_flat_ones_named(make_data):
    """The observation layout comes from episode 0: a later episode stored as a dict is refused in one line."""
    path = write_minari_dataset("test/x/mixed-v0", **make_data(), env_id=None, metadata={})
    with h5py.File(path / "data" / "main_data.hdf5", "r+") as f:
        episodes = sorted((k for k in f if k.startswith("episode_")), key=lambda k: int(k[8:]))
        assert len(episodes) >= 2
        flat = f[f"{episodes[1]}/observations"][()]
        del f[f"{episodes[1]}/observations"]
        f.create_group(f"{episodes[1]}/observations").create_dataset("observation", data=flat)
    with pytest.raises(ValueError, match=r"episode 1 has dict observations but episode 0 has flat arrays"):
        load_dataset("test/x/mixed-v0")


def test_writers_refuse_to_overwrite(tmp_path, make_data):
    a = make_data()
    p = write_npz(tmp_path / "a.npz", a)
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_npz(p, make_data(seed=3))
    assert p.read_bytes() == before
    write_npz(p, make_data(seed=3), overwrite=True)
    assert p.read_bytes() != before
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.npz"]


def test_directory_that_is_not_minari(tmp_path):
    with pytest.raises(ValueError, match="not a Minari dataset"):
        load_dataset(tmp_path)


def test_minari_write_racing_another_writer(make_data, monkeypatch):
    """If another process writes the same id while ours is being built, ours raises FileExistsError and the
    other dataset stays intact."""
    import minari

    real = minari.create_dataset_from_buffers
    other = make_data(lengths=(2, 3), seed=5)
    root = minari_root()  # captured now: while ours is built, $MINARI_DATASETS_PATH points at its staging folder

    def racing(*args, **kwargs):
        out = real(*args, **kwargs)
        monkeypatch.setattr(minari, "create_dataset_from_buffers", real)
        # the competitor finishes first, into the real root
        write_minari_dataset("test/x/race-v0", **other, env_id=None, metadata={"who": "other"}, root=root)
        return out

    monkeypatch.setattr(minari, "create_dataset_from_buffers", racing)
    with pytest.raises(FileExistsError, match="appeared"):
        write_minari_dataset("test/x/race-v0", **make_data(), env_id=None, metadata={"who": "us"})
    ds = load_dataset("test/x/race-v0")
    assert ds.metadata["who"] == "other" and ds.num_transitions == 5
    assert not [p for p in minari_root().iterdir() if p.name.startswith(".")]
