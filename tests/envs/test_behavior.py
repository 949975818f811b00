"""Behaviour policies read from SB3 zips: equal to SB3's own actor, and never a line of the file's code run."""

from __future__ import annotations

import base64
import json
import pathlib
import pickle
import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from flowrl.envs.behavior import from_sb3, load_behavior

from flowrl.errors import InputError


class _Touch:
    """Unpickling this creates ``path``: what a crafted file would do instead (run any code)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


@pytest.fixture(scope="module", params=["sac", "td3"])
def sb3_zip(request, tmp_path_factory) -> tuple[object, Path]:
    """(an SB3 model on Pendulum, the path of its saved zip)."""
    from stable_baselines3 import SAC, TD3
    from stable_baselines3.common.noise import NormalActionNoise

    env = gym.make("Pendulum-v1")
    kw = {"policy_kwargs": {"net_arch": [16, 8]}, "buffer_size": 10, "seed": 0, "device": "cpu"}
    if request.param == "sac":
        model = SAC("MlpPolicy", env, **kw)
    else:
        model = TD3("MlpPolicy", env, action_noise=NormalActionNoise(np.zeros(1), 0.3 * np.ones(1)), **kw)
    path = tmp_path_factory.mktemp("sb3") / f"{request.param}.zip"
    model.save(str(path))
    return model, path


def test_a_zip_reads_as_the_sb3_actor(sb3_zip):
    model, path = sb3_zip
    ours = load_behavior(path)
    obs = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    want, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(ours.act(obs, deterministic=True), want, rtol=1e-6, atol=1e-6)
    assert ours.hidden == (16, 8) and float(ours.action_high[0]) == 2.0
    assert ours.noise_std == pytest.approx(0.3 if ours.kind == "td3" else 0.1)
    from_model = from_sb3(model)
    for k, v in from_model.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k]), k


def _rewrite(src: Path, dst: Path, **replace: bytes) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, replace.get(name.replace(".", "_"), zin.read(name)))
    return dst


def test_a_crafted_zip_runs_no_code(sb3_zip, tmp_path):
    """SB3's loader unpickles the ``:serialized:`` fields of the zip's data with cloudpickle; flowrl reads
    none of them, and refuses a policy.pth that is not a plain state dict."""
    _, path = sb3_zip
    marker = tmp_path / "pwned"
    data = json.loads(zipfile.ZipFile(path).read("data"))
    payload = base64.b64encode(pickle.dumps(_Touch(marker))).decode()
    data["policy_class"][":serialized:"] = payload
    data["trap"] = {":type:": "<class 'object'>", ":serialized:": payload}
    crafted = _rewrite(path, tmp_path / "crafted.zip", data=json.dumps(data).encode())
    load_behavior(crafted)
    assert not marker.exists()

    import io

    buf = io.BytesIO()
    torch.save({"actor.mu.weight": _Touch(marker)}, buf)
    poisoned = _rewrite(path, tmp_path / "poisoned.zip", policy_pth=buf.getvalue())
    with pytest.raises(InputError, match="policy.pth is not a plain state dict"):
        load_behavior(poisoned)
    assert not marker.exists()


def test_foreign_zips_are_refused_in_one_line(sb3_zip, tmp_path):
    _, path = sb3_zip
    not_zip = tmp_path / "x.zip"
    not_zip.write_bytes(b"nope")
    with pytest.raises(InputError, match="is not an SB3 model zip"):
        load_behavior(not_zip)
    data = json.loads(zipfile.ZipFile(path).read("data"))
    data["policy_class"]["__module__"] = "stable_baselines3.ppo.policies"
    ppo = _rewrite(path, tmp_path / "ppo.zip", data=json.dumps(data).encode())
    with pytest.raises(InputError, match="not an SB3 SAC or TD3 model"):
        load_behavior(ppo)
