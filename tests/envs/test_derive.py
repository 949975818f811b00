"""``flowrl datasets derive``: POMDP datasets keep the right dimensions, record them, and refuse bad input
before writing anything."""

from __future__ import annotations

import numpy as np
import pytest
from flowrl.envs import TrajectoryDataset, load_dataset, write_d4rl_hdf5
from flowrl.envs.derive import derive_dataset, keep_indices, write_derived
from flowrl.envs.observations import ObservationMap

from flowrl.errors import InputError, OutputExistsError


def _hopper_file(tmp_path, make_data, name="hopper.hdf5", **meta):
    arrays = make_data(obs_dim=11, act_dim=3)
    path = tmp_path / name
    write_d4rl_hdf5(path, arrays, metadata={"env_name": "hopper", **meta})
    return path, arrays


@pytest.mark.parametrize(
    "keep, dims", [("velocities", list(range(5, 11))), ("positions", list(range(5))), ("7,0,3", [7, 0, 3])]
)
def test_derive_keeps_the_named_dimensions_and_records_them(tmp_path, make_data, keep, dims):
    src, arrays = _hopper_file(tmp_path, make_data)
    out, _ = write_derived(src, tmp_path / "out.hdf5", keep)
    ds = load_dataset(str(out))
    np.testing.assert_array_equal(ds.observations, arrays["observations"][:, dims])
    np.testing.assert_array_equal(ds.next_observations(), arrays["next_observations"][:, dims])
    np.testing.assert_array_equal(ds.actions, arrays["actions"])
    assert ds.observation_map == ObservationMap(indices=tuple(dims), size=11)
    assert ds.env_name == "hopper" and ds.metadata["derived_keep"] == keep


def test_halfcheetah_split_and_npz_output(tmp_path, make_data):
    arrays = make_data(obs_dim=17, act_dim=6)
    src = write_d4rl_hdf5(tmp_path / "hc.hdf5", arrays, metadata={"env_name": "halfcheetah"})
    out, _ = write_derived(src, tmp_path / "hc-v.npz", "velocities")
    ds = load_dataset(str(out))
    np.testing.assert_array_equal(ds.observations, arrays["observations"][:, 8:])
    assert ds.observation_map.indices == tuple(range(8, 17)) and ds.observation_map.size == 17


def test_indices_compose_with_a_selection_already_recorded(tmp_path, make_data):
    src, arrays = _hopper_file(tmp_path, make_data)
    mid, _ = write_derived(src, tmp_path / "v.hdf5", "velocities")  # dims 5..10 of the environment's
    out, _ = write_derived(mid, tmp_path / "vv.hdf5", "4,1")  # rows' dims 4, 1 = environment dims 9, 6
    ds = load_dataset(str(out))
    np.testing.assert_array_equal(ds.observations, arrays["observations"][:, [9, 6]])
    assert ds.observation_map == ObservationMap(indices=(9, 6), size=11)
    with pytest.raises(InputError, match="already keeps a subset"):
        write_derived(mid, tmp_path / "vp.hdf5", "positions")


def test_dict_flattening_is_kept(make_data):
    arrays = make_data(obs_dim=5)
    meta = {"observation_keys": ["a", "b"], "observation_key_sizes": [2, 3]}
    ds = TrajectoryDataset.from_arrays(*(arrays[k] for k in ("observations", "actions", "rewards")),
                                       arrays["terminals"], arrays["timeouts"], meta)  # fmt: skip
    derived = derive_dataset(ds, (4, 0))
    assert derived.observation_map == ObservationMap(keys=("a", "b"), key_sizes=(2, 3), indices=(4, 0), size=5)


@pytest.mark.parametrize(
    "env, obs_dim, keep, message",
    [
        ("pointmaze-umaze", 4, "velocities", "position/velocity split .* is unknown"),
        (None, 11, "positions", "position/velocity split .* is unknown"),
        ("hopper", 12, "velocities", "size 12, but hopper's position/velocity split is known for size 11"),
        ("hopper", 11, "11", "dimension 11 is out of range .* size 11"),
        ("hopper", 11, "1,2,1", "dimension 1 is listed twice"),
        ("hopper", 11, "1;2", "use velocities, positions or comma-separated"),
    ],
)
def test_bad_keep_is_refused(make_data, env, obs_dim, keep, message):
    arrays = make_data(obs_dim=obs_dim)
    meta = {"env_name": env} if env else {}
    ds = TrajectoryDataset.from_arrays(*(arrays[k] for k in ("observations", "actions", "rewards")),
                                       arrays["terminals"], arrays["timeouts"], meta)  # fmt: skip
    with pytest.raises(InputError, match=message):
        keep_indices(keep, ds)


def test_nothing_is_written_or_replaced_on_bad_input(tmp_path, make_data):
    src, _ = _hopper_file(tmp_path, make_data)
    out = tmp_path / "out.hdf5"
    with pytest.raises(InputError, match="out of range"):
        write_derived(src, out, "3,99")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hopper.hdf5"]
    out.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_derived(src, out, "velocities")
    assert out.read_bytes() == b"keep me"
    with pytest.raises(InputError, match=".hdf5 .* or .npz"):
        write_derived(src, tmp_path / "out.csv", "velocities")
    write_derived(src, out, "velocities", overwrite=True)
    assert load_dataset(str(out)).obs_dim == 6
