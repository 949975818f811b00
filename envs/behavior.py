"""Compact behaviour policies: the actor of an SB3 SAC/TD3 model as a plain torch module.

A shipped policy is two files with the same stem: ``NAME.pt`` (a flat ``{name: tensor}`` state dict, loadable
with ``torch.load(weights_only=True)``) and ``NAME.json`` (dims, hidden sizes, action bounds, env, how it was
made, evaluated return range). Acting needs torch only — no SB3, no gymnasium::

    policy = load_behavior("envs/policies/hopper_medium_sac.pt")
    actions = policy.act(obs)                        # obs [B, obs_dim] -> actions [B, act_dim], env units
    actions = policy.act(obs, deterministic=True)    # tanh of the Gaussian mean (SAC) / no noise (TD3)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from flowrl import atomic
from flowrl.errors import InputError, MissingInputError

__all__ = [
    "BehaviorPolicy",
    "load_behavior",
    "from_sb3",
    "export_sb3",
    "save_behavior",
    "POLICY_DIR",
    "shipped_policy_path",
]

POLICY_DIR = Path(__file__).resolve().parent / "policies"
FORMAT = "flowrl-behavior-v1"
# SB3's SAC clips the log-std to this range before sampling.
LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def shipped_policy_path(name: str = "hopper_medium_sac") -> Path:
    """Path of a policy shipped inside the package (``envs/policies/NAME.pt``)."""
    return POLICY_DIR / f"{name}.pt"


class BehaviorPolicy(nn.Module):
    """MLP actor: ReLU trunk, then a squashed Gaussian head (``kind="sac"``) or a tanh head (``kind="td3"``).

    Actions are produced in [-1, 1] and rescaled to ``[action_low, action_high]`` (what SB3 does for Box spaces).
    TD3's stochastic mode adds N(0, ``noise_std``) in the [-1, 1] space and clips, as in its exploration.
    """

    action_low: torch.Tensor
    action_high: torch.Tensor
    info: dict[str, Any]  # set by load_behavior: what the sidecar file says

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: tuple[int, ...] = (256, 256),
        *,
        kind: str = "sac",
        action_low=None,
        action_high=None,
        noise_std: float = 0.1,
    ) -> None:
        super().__init__()
        if kind not in ("sac", "td3"):
            raise InputError(f"unknown behaviour-policy kind {kind!r}; expected 'sac' or 'td3'")
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, tuple(hidden)
        self.kind, self.noise_std = kind, noise_std
        layers: list[nn.Module] = []
        d = obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        self.trunk = nn.Sequential(*layers)
        self.mu = nn.Linear(d, act_dim)
        self.log_std = nn.Linear(d, act_dim) if kind == "sac" else None
        low = -np.ones(act_dim) if action_low is None else np.asarray(action_low, dtype=np.float64)
        high = np.ones(act_dim) if action_high is None else np.asarray(action_high, dtype=np.float64)
        self.register_buffer("action_low", torch.as_tensor(low, dtype=torch.float32).reshape(act_dim))
        self.register_buffer("action_high", torch.as_tensor(high, dtype=torch.float32).reshape(act_dim))

    def forward(
        self, obs: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """obs ``[B, obs_dim]`` float -> actions ``[B, act_dim]`` in env units."""
        z = self.trunk(obs)
        mu = self.mu(z)
        if self.kind == "sac":
            if deterministic:
                a = torch.tanh(mu)
            else:
                assert self.log_std is not None  # built for kind "sac"
                std = self.log_std(z).clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
                eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
                a = torch.tanh(mu + std * eps)
        else:
            a = torch.tanh(mu)
            if not deterministic:
                eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
                a = (a + self.noise_std * eps).clamp(-1.0, 1.0)
        return self.action_low + 0.5 * (a + 1.0) * (self.action_high - self.action_low)

    @torch.no_grad()
    def act(self, obs, deterministic: bool = False, generator: torch.Generator | None = None) -> np.ndarray:
        """Batched numpy in, numpy out: obs ``[B, obs_dim]`` (or ``[obs_dim]``) -> float32 actions."""
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        single = x.ndim == 1
        if x.shape[-1] != self.obs_dim:
            raise InputError(f"observation has {x.shape[-1]} features; this policy expects {self.obs_dim}")
        a = self.forward(x[None] if single else x, deterministic, generator).numpy()
        return a[0] if single else a

    def config(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "hidden": list(self.hidden),
            "noise_std": self.noise_std,
            "action_low": self.action_low.tolist(),
            "action_high": self.action_high.tolist(),
        }


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def save_behavior(policy: BehaviorPolicy, path: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
    """Write ``path`` (.pt weights) and its .json sidecar (config + ``info``), each atomically."""
    path = Path(path).with_suffix(".pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in policy.state_dict().items()}
    meta = {**policy.config(), **(info or {})}
    with atomic.atomic_path(path) as tmp:
        torch.save(state, tmp)
    atomic.write_json(_sidecar(path), meta)
    return path


def load_behavior(path: str | os.PathLike) -> BehaviorPolicy:
    """Load a compact policy (``.pt`` + ``.json``), or convert an SB3 SAC/TD3 ``.zip`` (read without SB3 and
    without unpickling: see :func:`from_sb3`)."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"no policy file at {path}")
    if path.suffix == ".zip":
        return from_sb3(path)
    meta_path = _sidecar(path)
    if not meta_path.is_file():
        raise MissingInputError(f"policy {path} has no metadata file {meta_path.name}")
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            fmt = meta.get("format") if isinstance(meta, dict) else None
            raise InputError(f"{meta_path} is not a flowrl behaviour policy (format {fmt!r})")
        policy = BehaviorPolicy(
            int(meta["obs_dim"]),
            int(meta["act_dim"]),
            tuple(int(h) for h in meta["hidden"]),
            kind=meta["kind"],
            action_low=meta["action_low"],
            action_high=meta["action_high"],
            noise_std=float(meta.get("noise_std", 0.1)),
        )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{meta_path} is not a valid flowrl behaviour policy file ({type(e).__name__}: {e})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        policy.load_state_dict(state)
    except Exception as e:  # truncated, foreign, or another size: torch raises several types
        raise InputError(
            f"{path} does not hold the weights {meta_path.name} describes ({type(e).__name__}: {e})"
        ) from None
    policy.info = meta  # everything the sidecar says: env, how it was made, return range
    return policy.eval()


def from_sb3(model) -> BehaviorPolicy:
    """A :class:`BehaviorPolicy` with the actor weights of an SB3 SAC/TD3 model (or the path of its ``.zip``).

    A ``.zip`` is read without unpickling anything (and without SB3): the actor's weights come from the
    zip's ``policy.pth`` (``torch.load(weights_only=True)``), the spaces, the algorithm and TD3's noise
    from the plain fields of its JSON ``data``. SB3's own loader would unpickle parts of ``data``
    (cloudpickle), which runs whatever code a crafted file carries.
    """
    if isinstance(model, (str, os.PathLike)):
        return _from_parts(**_read_sb3_zip(Path(model)))
    actor = model.policy.actor
    space = model.action_space
    return _from_parts(
        actor_state=actor.state_dict(),
        obs_dim=int(np.prod(model.observation_space.shape)),
        act_dim=int(np.prod(space.shape)),
        low=np.asarray(space.low, dtype=np.float64),
        high=np.asarray(space.high, dtype=np.float64),
        use_sde=bool(getattr(actor, "use_sde", False)),
        noise_std=_td3_noise_std(model),
        source="the SB3 model",
    )


def _from_parts(*, actor_state, obs_dim, act_dim, low, high, use_sde, noise_std, source) -> BehaviorPolicy:
    sd = actor_state
    if "latent_pi.0.weight" in sd:  # SAC: latent_pi (Linear, ReLU)*, mu, log_std
        if use_sde:
            raise InputError(f"{source}: SAC with gSDE is not supported; train with use_sde=False")
        prefix, kind = "latent_pi.", "sac"
    elif "mu.0.weight" in sd:  # TD3: mu = (Linear, ReLU)*, Linear, Tanh
        prefix, kind = "mu.", "td3"
    else:
        raise InputError(f"{source}: unsupported SB3 actor: expected a SAC or TD3 MlpPolicy")
    linear_ids = sorted({int(k.split(".")[1]) for k in sd if k.startswith(prefix) and k.endswith(".weight")})
    if kind == "td3":
        linear_ids, head = linear_ids[:-1], linear_ids[-1]
    hidden = tuple(int(sd[f"{prefix}{i}.weight"].shape[0]) for i in linear_ids)
    policy = BehaviorPolicy(
        obs_dim,
        act_dim,
        hidden,
        kind=kind,
        action_low=low,
        action_high=high,
        noise_std=noise_std if kind == "td3" else 0.1,
    )
    new = {}
    try:
        for j, i in enumerate(linear_ids):
            for p in ("weight", "bias"):
                new[f"trunk.{2 * j}.{p}"] = sd[f"{prefix}{i}.{p}"]
        for p in ("weight", "bias"):
            new[f"mu.{p}"] = sd[f"mu.{p}"] if kind == "sac" else sd[f"mu.{head}.{p}"]
            if kind == "sac":
                new[f"log_std.{p}"] = sd[f"log_std.{p}"]
        new["action_low"], new["action_high"] = policy.action_low, policy.action_high
        policy.load_state_dict({k: v.float() for k, v in new.items()})
    except (KeyError, RuntimeError) as e:
        raise InputError(f"{source}: the actor's weights do not form an MLP policy ({e})") from None
    return policy.eval()


def _td3_noise_std(model) -> float:
    noise = getattr(model, "action_noise", None)
    sigma = getattr(noise, "_sigma", None)
    return float(np.mean(sigma)) if sigma is not None else 0.1


def _numbers(text: Any, shape: list[int], what: str, path: Path) -> np.ndarray:
    """A numpy array from the repr SB3 stores for it in ``data`` (``"[-1. -1. -1.]"``)."""
    try:
        values = np.array(str(text).replace("[", " ").replace("]", " ").split(), dtype=np.float64)
        return values.reshape(shape)
    except (ValueError, TypeError):
        raise InputError(f"{path}: cannot read {what} from the zip's data ({str(text)[:60]!r})") from None


def _read_sb3_zip(path: Path) -> dict[str, Any]:
    """The parts :func:`_from_parts` needs, from an SB3 SAC/TD3 ``.zip``, without unpickling."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
            if "data" not in names or "policy.pth" not in names:
                raise InputError(f"{path} is not an SB3 model zip (no data or policy.pth in it)")
            data = json.loads(z.read("data"))
            weights = torch.load(io.BytesIO(z.read("policy.pth")), map_location="cpu", weights_only=True)
    except zipfile.BadZipFile as e:
        raise InputError(f"{path} is not an SB3 model zip ({e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: the zip's data is not JSON ({e})") from None
    except InputError:
        raise
    except Exception as e:  # torch's unpickler refuses anything but tensors and plain containers
        raise InputError(f"{path}: policy.pth is not a plain state dict ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict) or not isinstance(weights, dict):
        raise InputError(f"{path} is not an SB3 model zip (unexpected data)")
    module = str((data.get("policy_class") or {}).get("__module__", ""))
    if not module.startswith(("stable_baselines3.sac", "stable_baselines3.td3")):
        raise InputError(f"{path} is not an SB3 SAC or TD3 model (policy module {module or 'unknown'!r})")
    spaces = {}
    for key in ("observation_space", "action_space"):
        space = data.get(key) or {}
        if "Box" not in str(space.get(":type:", "")) or not isinstance(space.get("_shape"), list):
            raise InputError(f"{path}: {key} is not a Box; flowrl reads SAC/TD3 policies of Box spaces")
        spaces[key] = space
    act = spaces["action_space"]
    shape = act["_shape"]
    noise = data.get("action_noise") or {}
    sigma = noise.get("_sigma") if isinstance(noise, dict) else None
    return {
        "actor_state": {k[len("actor.") :]: v for k, v in weights.items() if k.startswith("actor.")},
        "obs_dim": int(np.prod(spaces["observation_space"]["_shape"])),
        "act_dim": int(np.prod(shape)),
        "low": _numbers(act.get("low"), shape, "the action space's low bound", path),
        "high": _numbers(act.get("high"), shape, "the action space's high bound", path),
        "use_sde": bool(data.get("use_sde", False)),
        "noise_std": float(np.mean(_numbers(sigma, [-1], "TD3's action noise", path))) if sigma else 0.1,
        "source": str(path),
    }


def export_sb3(model, path: str | os.PathLike, info: dict[str, Any] | None = None) -> Path:
    """Export the actor of an SB3 SAC/TD3 model (or ``.zip`` path) to the compact ``.pt`` + ``.json`` format."""
    return save_behavior(from_sb3(model), path, info)
