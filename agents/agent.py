"""Agents: a network, its config and its dataset statistics, with loss, policy and save/load.

``DTAgent`` (Decision Transformer, flow or softmax attention) and ``BCAgent`` share one interface, so the
trainer, the rollout code and the tests treat them alike:

- ``make_sampler(dataset, seed)`` -> an object with ``sample(batch_size)``;
- ``loss(batch)`` -> scalar tensor (masked action MSE);
- ``make_policy()`` -> a :class:`flowrl.envs.Policy` for vectorized evaluation;
- ``act(...)`` for users' own loops; ``save(path)`` and :func:`load_agent`.

A saved agent is a folder: ``model.pt`` (a state dict; ``torch.load(weights_only=True)``) and
``agent.json`` (algo, config, observation/action sizes, env, the observation map, dataset info). The
observation map (:class:`flowrl.envs.observations.ObservationMap`: a flattened dict layout and/or kept
dimensions) comes from the training dataset; policies carry it, so rollouts map the live environment's
observations the same way. ``model.pt`` also holds, under ``"_flowrl.agent"``, the algo, config and
sizes it was trained with, so loading refuses weights whose agent.json describes another model (flow
attention weights under a softmax agent.json, say); pop that entry before ``model.load_state_dict``
if you load the file yourself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flowrl.agents.config import CONFIGS, AgentConfig, BCConfig, DecisionTransformerConfig
from flowrl.agents.models import BCNetwork, DecisionTransformer
from flowrl.envs.observations import ObservationMap
from torch import Tensor, nn

from flowrl import atomic
from flowrl.errors import InputError, MissingInputError

if TYPE_CHECKING:
    from flowrl.envs import ContextSampler, EpisodeSampler, Policy, TransitionSampler

__all__ = ["Agent", "DTAgent", "BCAgent", "make_agent", "load_agent", "MODEL_FILE", "AGENT_FILE"]

MODEL_FILE = "model.pt"
AGENT_FILE = "agent.json"
CHECKPOINT_NAME = re.compile(r"step_\d{8,}")
"""A trainer checkpoint folder's name (``checkpoints/latest`` must name one)."""


class Agent:
    """Common part of every agent. Subclasses set ``algo``, build ``self.model`` and provide the methods that
    raise NotImplementedError here."""

    algo: str = ""
    config: AgentConfig
    model: DecisionTransformer | BCNetwork

    def __init__(
        self,
        config: AgentConfig,
        obs_dim: int,
        act_dim: int,
        *,
        env_name: str | None = None,
        info=None,
        observation_map: ObservationMap | None = None,
    ):
        if obs_dim < 1 or act_dim < 1:
            raise ValueError(f"{type(self).__name__}: obs_dim and act_dim must be >= 1, got {obs_dim}, {act_dim}")
        self.config, self.obs_dim, self.act_dim = config, int(obs_dim), int(act_dim)
        self.env_name = env_name
        self.info: dict[str, Any] = dict(info or {})
        self.observation_map: ObservationMap | None = None
        self._set_observation_map(observation_map)

    def _set_observation_map(self, obs_map: ObservationMap | None) -> None:
        if obs_map is not None and obs_map.out_dim not in (None, self.obs_dim):
            raise InputError(
                f"observation map gives {obs_map.out_dim} values ({obs_map.describe()}) but the agent takes "
                f"{self.obs_dim}"
            )
        self.observation_map = obs_map

    # ----------------------------------------------------------------- data
    def fit_normalization(self, dataset) -> None:
        """Take state statistics (and env name, dataset info) from a TrajectoryDataset."""
        self.check_dataset(dataset)
        if dataset.observation_map is not None:
            self._set_observation_map(dataset.observation_map)
        if self.config.normalize_states:
            self.model.normalizer.set(dataset.state_mean, dataset.state_std)
        if dataset.env_name and not self.env_name:
            self.env_name = dataset.env_name
        returns = np.asarray(dataset.episode_returns, dtype=np.float64)
        self.info["dataset_return_max"] = float(returns.max())
        self.info["dataset_return_mean"] = float(returns.mean())
        meta = dataset.metadata
        for key in ("ref_min_score", "ref_max_score", "source"):
            if meta.get(key) is not None:
                self.info[f"dataset_{key}"] = meta[key]

    def dataset_targets(self) -> tuple[float, ...]:
        """Fallback DT targets for envs without published ones: the dataset's best and mean episode return."""
        if "dataset_return_max" not in self.info:
            raise InputError("no target returns known: pass target returns explicitly")
        return (self.info["dataset_return_max"], self.info["dataset_return_mean"])

    def reference_scores(self) -> tuple[float, float] | None:
        """(ref_min, ref_max) from the training dataset's metadata, if it had them."""
        lo, hi = self.info.get("dataset_ref_min_score"), self.info.get("dataset_ref_max_score")
        return None if lo is None or hi is None else (float(lo), float(hi))

    def check_dataset(self, dataset) -> None:
        if dataset.obs_dim != self.obs_dim or dataset.act_dim != self.act_dim:
            raise InputError(
                f"dataset has observation/action sizes {dataset.obs_dim}/{dataset.act_dim} but the agent was built "
                f"for {self.obs_dim}/{self.act_dim}; train a new agent for this dataset"
            )
        theirs = dataset.observation_map
        if self.observation_map is not None and theirs is not None and theirs != self.observation_map:
            raise InputError(
                f"dataset observations are {theirs.describe()} but the agent's are {self.observation_map.describe()}; "
                "train a new agent for this dataset"
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def to(self, device) -> Agent:
        self.model.to(device)
        return self

    def _tensor(self, x, dtype=None) -> Tensor:
        return torch.as_tensor(np.asarray(x), device=self.device, dtype=dtype or self.dtype)

    # ----------------------------------------------------------------- what subclasses provide
    def make_sampler(self, dataset, seed: int) -> ContextSampler | EpisodeSampler | TransitionSampler:
        """An object whose ``sample(batch_size)`` draws training batches from ``dataset``."""
        raise NotImplementedError

    def loss(self, batch, model: nn.Module | None = None) -> Tensor:
        """Scalar training loss of ``batch``; ``model`` runs the forward instead of ``self.model``."""
        raise NotImplementedError

    def make_policy(self, *, rollout: str | None = None, restart_every: int | None = None) -> Policy:
        """A :class:`flowrl.envs.Policy` for vectorized evaluation."""
        raise NotImplementedError

    def act(self, states, *args, **kwargs) -> np.ndarray:
        """Action(s) for raw observations, for users' own loops."""
        raise NotImplementedError

    # ----------------------------------------------------------------- persistence
    def describe(self) -> dict[str, Any]:
        return {
            "algo": self.algo,
            "config": self.config.to_dict(),
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "env_name": self.env_name,
            "observation": None if self.observation_map is None else self.observation_map.to_dict(),
            "info": self.info,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``model.pt`` + ``agent.json`` into the folder ``path`` atomically (an existing folder is
        replaced once the new one is complete)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_dir(path, replace=True) as tmp:
            self.write_into(tmp)
        return path

    def write_into(self, folder: Path) -> None:
        """Write ``model.pt`` (:meth:`weights`) and ``agent.json`` (:meth:`describe`) into ``folder``."""
        torch_save(self.weights(), folder / MODEL_FILE)
        text = json.dumps(self.describe(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        with open(folder / AGENT_FILE, "w") as f:
            f.write(text)

    def architecture(self) -> dict[str, Any]:
        """What decides how the weights compute: algo, sizes and the config without its training-only
        fields (optimizer, batch, dropout); stored inside the weights file."""
        config = {k: v for k, v in self.config.to_dict().items() if k not in TRAINING_ONLY}
        return {"algo": self.algo, "config": config, "obs_dim": self.obs_dim, "act_dim": self.act_dim}

    def weights(self) -> dict[str, Tensor]:
        """The model's state dict on the CPU plus ``WEIGHTS_KEY``: :meth:`architecture` as a uint8 JSON tensor,
        so a weights file carries what it was trained as (two models of one size can differ in kind)."""
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        state[WEIGHTS_KEY] = _json_tensor(self.architecture())
        return state

    def load_weights(self, state: dict[str, Any], source: str | os.PathLike, against: str = "agent.json") -> None:
        """Load what :meth:`weights` returned (or a plain state dict); InputError, naming ``source``, when the
        weights were written for another architecture than this agent's (``against`` names where this
        agent's came from), another size, or hold NaN/infinity."""
        state = dict(state)
        written = state.pop(WEIGHTS_KEY, None)
        if written is not None:
            arch = _json_from_tensor(written, source)
            ours = json.loads(json.dumps(self.architecture()))  # tuples as lists, as in the file
            diff = _differences(arch, ours)
            if diff:
                raise InputError(
                    f"{source} holds weights of another model than {against} describes: "
                    + "; ".join(f"{k} is {a!r} in the weights but {b!r} in {against}" for k, a, b in diff[:4])
                )
        own = self.model.state_dict()
        mismatched = [
            f"{k}: file {tuple(v.shape)} vs config {tuple(own[k].shape)}"
            for k, v in state.items()
            if k in own and hasattr(v, "shape") and v.shape != own[k].shape
        ]
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if mismatched or missing or unexpected:
            detail = "; ".join(
                mismatched[:3]
                + [f"missing {missing[:3]}"] * bool(missing)
                + [f"unexpected {unexpected[:3]}"] * bool(unexpected)
            )
            raise InputError(f"{source} does not match the agent's config (another model size?): {detail}")
        bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise InputError(f"{source} holds NaN or infinite weights (in {', '.join(bad[:3])}); it cannot act")
        self.model.load_state_dict(state)


TRAINING_ONLY = ("lr", "weight_decay", "warmup_steps", "grad_clip", "batch_size", "dropout")
"""Agent config fields that change how weights are trained, not what they compute."""

WEIGHTS_KEY = "_flowrl.agent"
"""State-dict entry of a weights file that holds :meth:`Agent.architecture` (JSON as a uint8 tensor)."""


def _json_tensor(obj: Any) -> Tensor:
    return torch.frombuffer(bytearray(json.dumps(obj, sort_keys=True).encode()), dtype=torch.uint8).clone()


def _json_from_tensor(t: Any, source: str | os.PathLike) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(t.to(torch.uint8).tolist()).decode())
        if not isinstance(obj, dict):
            raise ValueError("not an object")
        return obj
    except (ValueError, AttributeError, TypeError, UnicodeDecodeError) as e:
        raise InputError(f"{source}: unreadable {WEIGHTS_KEY} entry ({e})") from None


def _differences(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) where nested dicts ``a`` and ``b`` differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip(".").removeprefix("config."), a, b)]


def torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through a file object, so a full disk raises ``OSError`` naming ``path`` (a path
    argument gives an unnamed RuntimeError from torch's zip writer)."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except OSError as e:
        if e.filename is None and e.errno is not None:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


class DTAgent(Agent):
    """Decision Transformer agent (``config.attention``: "flow" or "softmax")."""

    algo = "dt"
    config: DecisionTransformerConfig
    model: DecisionTransformer

    def __init__(self, config: DecisionTransformerConfig, obs_dim: int, act_dim: int, **kw):
        super().__init__(config, obs_dim, act_dim, **kw)
        self._scale_from_env = config.reward_scale is None
        self.config = self._with_env_reward_scale(config)
        self.model = DecisionTransformer(self.config, self.obs_dim, self.act_dim)

    def fit_normalization(self, dataset) -> None:
        super().fit_normalization(dataset)
        self.config = self.model.config = self._with_env_reward_scale(self.config)

    @property
    def reward_scale(self) -> float:
        """The factor returns-to-go are multiplied by: the config's, resolved when unset (never None here)."""
        scale = self.config.reward_scale
        assert scale is not None, "DTAgent resolves an unset reward_scale in __init__"
        return scale

    def _with_env_reward_scale(self, config: DecisionTransformerConfig) -> DecisionTransformerConfig:
        """``config`` with an unset reward_scale resolved from the agent's environment (its EnvSpec's value;
        1e-3 where flowrl has no spec for it or the environment is not known yet)."""
        if not self._scale_from_env:
            return config
        from flowrl.envs.specs import EnvSpec, get_spec

        scale = EnvSpec.reward_scale
        if self.env_name:
            try:
                scale = get_spec(self.env_name).reward_scale
            except InputError:
                pass
        return dataclasses.replace(config, reward_scale=scale)

    def make_sampler(self, dataset, seed: int):
        """K-step windows (:class:`flowrl.envs.ContextSampler`), or for memory models sequences from the
        episode start (:class:`flowrl.envs.EpisodeSampler`: whole episodes or segments)."""
        from flowrl.envs import ContextSampler, EpisodeSampler

        self.check_dataset(dataset)
        cfg = self.config
        if not cfg.memory:
            return ContextSampler(
                dataset,
                cfg.context,
                reward_scale=self.reward_scale,
                seed=seed,
                normalize_states=cfg.normalize_states,
                anchor=cfg.window_sampling,
            )
        longest, limit = int(dataset.episode_lengths.max()), cfg.time_limit
        if limit is not None and longest > limit:
            raise InputError(
                f"the dataset has episodes of up to {longest} steps but the model's timestep table has "
                f"max_timestep={limit}; set max_timestep >= {longest} (or timestep_embedding='none')"
            )
        return EpisodeSampler(
            dataset,
            cfg.context,
            segments=cfg.memory_training == "segments",
            reward_scale=self.reward_scale,
            seed=seed,
            normalize_states=cfg.normalize_states,
        )

    def batch_tensors(self, batch) -> tuple[Tensor, ...]:
        """ContextBatch (numpy) -> states, actions, returns_to_go, timesteps, mask tensors on the device."""
        dev = self.device
        f = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(dev, non_blocking=True)  # noqa: E731
        return f(batch.states), f(batch.actions), f(batch.returns_to_go), f(batch.timesteps), f(batch.mask)

    def loss(self, batch, model: nn.Module | None = None) -> Tensor:
        """Masked action MSE of a ContextBatch, or of an EpisodeBatch for memory models (segments continue
        from the state of the episode before them, see :mod:`flowrl.agents.memory`). ``model`` runs the
        forward instead of ``self.model`` (a wrapper of it, e.g. DistributedDataParallel)."""
        err, mask = self.step_errors(batch, model)
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    def step_errors(self, batch, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """The action MSE of every step of ``batch`` and the mask of the steps that carry loss, both [B, T]:
        what :meth:`loss` reduces (a seed-batched run reduces them per seed)."""
        model = model or self.model
        states, actions, rtg, timesteps, mask = self.batch_tensors(batch)
        if self.config.memory and self.config.memory_training == "segments":
            from flowrl.agents.memory import segment_predictions

            pred, steps = segment_predictions(model, states, actions, rtg, timesteps, batch.starts, self.config.context)
            actions = actions.gather(1, steps[..., None].expand(-1, -1, actions.shape[-1]))
            # positions past the batch's end were clamped to its last step: they must not count it again
            unclamped = steps[:, :1] + torch.arange(steps.shape[1], device=steps.device)
            mask = mask.gather(1, steps) * (unclamped == steps)
        else:
            pred = model(states, actions, rtg, timesteps)
        return (pred.float() - actions).square().mean(-1), mask

    def make_policy(self, *, rollout: str | None = None, restart_every: int | None = None):
        """A stateful rollout policy for N environments (:class:`flowrl.agents.DTPolicy`).

        ``rollout``: ``"window"`` (the last K steps, as trained), ``"staggered"`` (flow attention: recurrent
        states restarted every ``restart_every`` steps, a window of K-s+1..K steps, several times cheaper)
        or ``"episode"`` (flow attention: one recurrent state over the whole episode). Default (None): the
        model's own, ``"episode"`` for memory models (exactly what they were trained on), else ``"window"``.
        """
        from flowrl.agents.policy import DTPolicy

        return DTPolicy(self, rollout=rollout or self.config.default_rollout, restart_every=restart_every)

    @torch.no_grad()
    def act(self, states, returns_to_go, actions=None, timesteps=None) -> np.ndarray:
        """The action for the last step of a history (the last ``context`` steps are used; memory models:
        all of it, which should start at the episode's first step).

        Args (raw, unnormalised; optional leading batch dim B):
            states: [T, obs_dim]; returns_to_go: [T] unscaled returns still to collect at each step;
            actions: [T, act_dim] actions taken before each step (the last row is ignored; default zeros);
            timesteps: [T] int (default 0..T-1).
        Returns: [act_dim] (or [B, act_dim]).
        """
        s = np.asarray(states, dtype=np.float32)
        single = s.ndim == 2
        if single:
            s = s[None]
        if s.ndim != 3 or s.shape[-1] != self.obs_dim:
            raise ValueError(
                f"states has shape {np.shape(states)}, expected [T, {self.obs_dim}] or [B, T, {self.obs_dim}]"
            )
        B, T, _ = s.shape
        r = np.asarray(returns_to_go, dtype=np.float32).reshape(B, T, 1)
        a = (
            np.zeros((B, T, self.act_dim), np.float32)
            if actions is None
            else np.asarray(actions, np.float32).reshape(B, T, -1)
        )
        ts = np.tile(np.arange(T), (B, 1)) if timesteps is None else np.asarray(timesteps).reshape(B, T)
        K = T if self.config.memory else self.config.context
        s, a, r, ts = s[:, -K:], a[:, -K:].copy(), r[:, -K:], ts[:, -K:]
        a[:, -1] = 0.0  # the current action is what we predict
        self.model.eval()
        pred = self.model(
            self.model.normalizer(self._tensor(s)),
            self._tensor(a),
            self._tensor(r * self.reward_scale),
            self._tensor(ts, torch.long),
        )[:, -1]
        out = pred.float().cpu().numpy()
        return out[0] if single else out


class BCAgent(Agent):
    """Behaviour cloning baseline: an MLP policy trained by action MSE on single transitions."""

    algo = "bc"
    config: BCConfig
    model: BCNetwork

    def __init__(self, config: BCConfig, obs_dim: int, act_dim: int, **kw):
        super().__init__(config, obs_dim, act_dim, **kw)
        self.model = BCNetwork(config, self.obs_dim, self.act_dim)

    def make_sampler(self, dataset, seed: int):
        from flowrl.envs import TransitionSampler

        self.check_dataset(dataset)
        return TransitionSampler(dataset, seed=seed, normalize_states=self.config.normalize_states)

    def loss(self, batch, model: nn.Module | None = None) -> Tensor:
        """Action MSE of ``batch``; ``model`` runs the forward instead of ``self.model`` (a wrapper of it)."""
        dev = self.device
        states = torch.from_numpy(np.ascontiguousarray(batch.states)).to(dev)
        actions = torch.from_numpy(np.ascontiguousarray(batch.actions)).to(dev)
        return ((model or self.model)(states).float() - actions).square().mean()

    def make_policy(self, *, rollout: str | None = None, restart_every: int | None = None):
        """A memoryless policy; the rollout options of Decision Transformers do not apply."""
        from flowrl.agents.policy import BCPolicy

        if rollout not in (None, "window") or restart_every is not None:
            raise InputError(f"rollout={rollout!r} / restart_every are for Decision Transformers, not BC")
        return BCPolicy(self)

    @torch.no_grad()
    def act(self, states, *_, **__) -> np.ndarray:
        """Action(s) for raw observations [obs_dim] or [B, obs_dim] (or a history [.., T, obs_dim]: last row)."""
        s = np.asarray(states, dtype=np.float32)
        if s.shape[-1] != self.obs_dim:
            raise ValueError(f"states has shape {s.shape}, expected [..., {self.obs_dim}]")
        self.model.eval()
        out = self.model(self.model.normalizer(self._tensor(s))).float().cpu().numpy()
        return out


AGENTS: dict[str, type[Agent]] = {"dt": DTAgent, "bc": BCAgent}


def make_agent(config: AgentConfig, obs_dim: int, act_dim: int, *, seed: int | None = None, **kw) -> Agent:
    """Build the agent for ``config`` (weights initialised from ``seed`` when given)."""
    for algo, cls in CONFIGS.items():
        if isinstance(config, cls):
            if seed is not None:
                torch.manual_seed(seed)
            return AGENTS[algo](config, obs_dim, act_dim, **kw)
    raise ValueError(f"unknown config type {type(config).__name__}")


def _resolve_checkpoint(path: Path) -> Path:
    """A saved-agent folder, a trainer checkpoint folder, or a run folder (-> its latest checkpoint)."""
    if (path / AGENT_FILE).exists():
        return path
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        name = latest.read_text(errors="replace").strip()
        if CHECKPOINT_NAME.fullmatch(name) and (path / "checkpoints" / name / AGENT_FILE).exists():
            return path / "checkpoints" / name
    raise MissingInputError(
        f"{path} is not a flowrl checkpoint: expected {AGENT_FILE} and {MODEL_FILE} in it, "
        "or a run folder with checkpoints/latest"
    )


def load_agent(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Agent:
    """Load an agent saved by :meth:`Agent.save` or by the trainer (a checkpoint or a run folder)."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"checkpoint {path} does not exist")
    folder = _resolve_checkpoint(path)
    try:
        meta = json.loads((folder / AGENT_FILE).read_text())
        algo = meta["algo"]
        if algo not in AGENTS:
            raise InputError(f"unknown algo {algo!r}")
        config = CONFIGS[algo].from_dict(meta["config"])
        observation = meta.get("observation")
        agent = AGENTS[algo](
            config,
            int(meta["obs_dim"]),
            int(meta["act_dim"]),
            env_name=meta.get("env_name"),
            info=meta.get("info"),
            observation_map=None if observation is None else ObservationMap.from_dict(observation),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"checkpoint {folder / AGENT_FILE} is invalid: {e}") from None
    try:
        state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MissingInputError(f"checkpoint {folder} has no {MODEL_FILE}") from None
    except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError on truncated or foreign files
        raise InputError(
            f"checkpoint {folder / MODEL_FILE} is corrupt or truncated ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict):
        raise InputError(f"checkpoint {folder / MODEL_FILE} is not a state dict")
    agent.load_weights(state, folder / MODEL_FILE)
    agent.model.eval()
    return agent.to(device)
