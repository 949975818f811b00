"""Agent configs: the Decision Transformer (flow or softmax attention) and the BC baseline.

Each config holds the model size *and* its optimisation hyperparameters (what a preset changes together),
validates itself in ``__post_init__`` and round-trips through JSON. The training run (dataset, steps,
evaluation) is configured separately by :class:`flowrl.agents.trainer.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from flowrl.errors import InputError
from flowrl.models.config import JsonConfig

__all__ = ["DecisionTransformerConfig", "BCConfig", "AgentConfig", "PRESETS", "preset", "config_from_dict"]


def _require(cls_name: str, cond: bool, message: str) -> None:
    if not cond:
        raise InputError(f"{cls_name}: {message}")


@dataclass
class _OptimFields:
    lr: float = 1e-4
    """AdamW learning rate (peak, after warmup)."""
    weight_decay: float = 1e-4
    """AdamW weight decay (not applied to biases, norms and embeddings)."""
    warmup_steps: int = 10_000
    """Linear learning-rate warmup from 0 over this many updates, then constant."""
    grad_clip: float = 0.25
    """Clip the global gradient norm to this value (0 disables)."""
    batch_size: int = 64
    """Sequences (DT) or transitions (BC) per update."""

    def _check_optim(self) -> None:
        name = type(self).__name__
        _require(name, 0 < self.lr < math.inf, f"lr must be > 0 and finite, got {self.lr}")
        _require(
            name, 0 <= self.weight_decay < math.inf, f"weight_decay must be >= 0 and finite, got {self.weight_decay}"
        )
        _require(name, self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(name, 0 <= self.grad_clip < math.inf, f"grad_clip must be finite and >= 0, got {self.grad_clip}")
        _require(name, self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class DecisionTransformerConfig(_OptimFields, JsonConfig):
    """Decision Transformer (Chen et al. 2021) with Flow-Attention or softmax attention.

    Defaults are the original Decision Transformer's Gym settings; ``attention="flow"`` gives the
    Flowformer paper's agent (causal Flow-Attention, conserved-source clamp 10 as in its RL code).
    """

    algo: ClassVar[str] = "dt"

    context: int = 20
    """Context length K in timesteps (each timestep is 3 tokens: return-to-go, state, action)."""
    dim: int = 128
    """Token embedding size."""
    depth: int = 3
    """Transformer blocks."""
    heads: int = 1
    """Attention heads (dim must be divisible by heads)."""
    attention: str = "flow"
    """Attention kind: "flow" (Flow-Attention) or "softmax" (the original DT)."""
    clamp: float = 10.0
    """Flow attention: bound of the conserved source flow (the Flowformer RL code uses 10)."""
    activation: str = "relu"
    """MLP activation: "relu" (original DT) or "gelu" (CORL)."""
    mlp_ratio: float = 4.0
    """MLP hidden width as a multiple of dim."""
    dropout: float = 0.1
    """Dropout on embeddings, attention output and MLP output."""
    max_timestep: int = 1000
    """Size of the timestep embedding table: steps 0..max_timestep-1 (a rollout past it is an error)."""
    timestep_embedding: str = "table"
    """How tokens learn their episode step: "table" (a learned embedding per step up to max_timestep) or
    "none" (no time input: no table, no limit on episode length)."""
    memory: bool = False
    """Remember the whole episode: train on sequences that start at the episode's first step and roll out
    with one recurrent Flow-Attention state per episode (rollout "episode", constant cost per step)."""
    memory_training: str = "episodes"
    """Memory models: "episodes" (whole episodes up to `context` steps, gradient through all of them) or
    "segments" (`context`-step segments, each starting from the exact state of the episode before it,
    computed without gradient)."""
    window_sampling: str = "start"
    """How training windows are drawn (models without memory): "start" (the Decision Transformer paper's:
    a start step uniform within an episode drawn in proportion to its length; a window that reaches the
    episode's end is cut there) or "end" (d3rlpy's: an end step uniform over all transitions; a window that
    reaches back past the episode's start is cut there, so the first K-1 steps of an episode are trained
    with all the history a rollout has at them)."""
    reward_scale: float | None = None
    """Returns-to-go are multiplied by this before entering the model; unset: the dataset environment's
    value (EnvSpec.reward_scale: 1e-3 for MuJoCo locomotion and Adroit, 1e-2 for PointMaze, 1 for AntMaze,
    Kitchen and the T-maze), 1e-3 for environments flowrl has no spec for. The resolved value is saved with
    the agent."""
    normalize_states: bool = True
    """Standardise states with the dataset's mean/std."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        self._check_optim()
        _require(name, self.context >= 1, f"context K must be >= 1, got {self.context}")
        _require(name, self.dim >= 1, f"dim must be >= 1, got {self.dim}")
        _require(name, self.depth >= 1, f"depth must be >= 1, got {self.depth}")
        _require(name, self.heads >= 1 and self.dim % self.heads == 0, f"heads={self.heads} must divide dim={self.dim}")
        _require(name, self.attention in ("flow", "softmax"), f"unknown attention {self.attention!r}; use flow|softmax")
        _require(name, 0 < self.clamp <= 50, f"clamp must be in (0, 50], got {self.clamp}")
        _require(name, self.activation in ("relu", "gelu"), f"unknown activation {self.activation!r}; use relu|gelu")
        _require(name, 0 < self.mlp_ratio < math.inf, f"mlp_ratio must be finite and > 0, got {self.mlp_ratio}")
        _require(name, 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        _require(name, self.max_timestep >= 1, f"max_timestep must be >= 1, got {self.max_timestep}")
        _require(
            name,
            self.reward_scale is None or 0 < self.reward_scale < math.inf,
            f"reward_scale must be finite and > 0, got {self.reward_scale}",
        )
        _require(
            name,
            self.timestep_embedding in ("table", "none"),
            f"unknown timestep_embedding {self.timestep_embedding!r}; use table|none",
        )
        _require(
            name,
            self.window_sampling in ("start", "end"),
            f"unknown window_sampling {self.window_sampling!r}; use start|end",
        )
        _require(
            name,
            self.memory_training in ("episodes", "segments"),
            f"unknown memory_training {self.memory_training!r}; use episodes|segments",
        )
        _require(
            name,
            not self.memory or self.attention == "flow",
            "memory=True needs attention='flow' (its rollout is one recurrent Flow-Attention state per episode)",
        )
        _require(
            name,
            not (self.memory and self.memory_training == "episodes" and self.timestep_embedding == "table")
            or self.context <= self.max_timestep,
            f"a memory model trained on whole episodes of up to context={self.context} steps needs "
            f"max_timestep >= {self.context}, got {self.max_timestep}",
        )

    @property
    def time_limit(self) -> int | None:
        """The longest episode (in steps) the model can embed, or None without a limit."""
        return self.max_timestep if self.timestep_embedding == "table" else None

    @property
    def default_rollout(self) -> str:
        """The rollout that is exactly the computation the model was trained on."""
        return "episode" if self.memory else "window"

    def trunk_config(self):
        from flowrl.models import FlowformerConfig

        return FlowformerConfig(
            dim=self.dim,
            depth=self.depth,
            heads=self.heads,
            attention=self.attention,
            causal=True,
            dropout=self.dropout,
            mlp_ratio=self.mlp_ratio,
            activation=self.activation,
            clamp=self.clamp,
        )


@dataclass
class BCConfig(_OptimFields, JsonConfig):
    """Behaviour cloning: an MLP from (normalised) state to a tanh-squashed action, trained by MSE."""

    algo: ClassVar[str] = "bc"

    hidden: int = 256
    """Width of each hidden layer."""
    layers: int = 2
    """Hidden layers."""
    dropout: float = 0.1
    """Dropout after each hidden layer."""
    normalize_states: bool = True
    """Standardise states with the dataset's mean/std."""
    batch_size: int = 256
    """Transitions per update."""
    warmup_steps: int = 0
    """Linear learning-rate warmup (BC needs none)."""
    lr: float = 1e-3
    """AdamW learning rate."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        self._check_optim()
        _require(name, self.hidden >= 1, f"hidden must be >= 1, got {self.hidden}")
        _require(name, self.layers >= 1, f"layers must be >= 1, got {self.layers}")
        _require(name, 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")


AgentConfig = DecisionTransformerConfig | BCConfig
CONFIGS: dict[str, type[DecisionTransformerConfig] | type[BCConfig]] = {"dt": DecisionTransformerConfig, "bc": BCConfig}

PRESETS: dict[str, dict[str, Any]] = {
    # the original Decision Transformer (Chen et al. 2021), Gym settings: the dataclass defaults
    "dt": {},
    # the Flowformer paper's RL script (Flowformer_RL/scripts/flowformer.sh): wider, 4 heads, lr 1e-3
    "flowformer": {"dim": 256, "heads": 4, "lr": 1e-3, "attention": "flow", "clamp": 10.0},
    # CORL's single-file DT on Gym-MuJoCo: GELU MLP, larger learning rate
    "corl": {"activation": "gelu", "lr": 8e-4},
    # episode memory: flow-DT trained on whole episodes (up to 1000 steps = 3000 tokens through the chunked
    # kernel), rolled out with one recurrent state per episode; a batch holds fewer, longer sequences
    "memory": {"memory": True, "context": 1000, "max_timestep": 1000, "batch_size": 8, "attention": "flow"},
}


def preset(name: str, **overrides: Any) -> DecisionTransformerConfig:
    """A DecisionTransformerConfig from a named preset ("dt", "flowformer", "corl", "memory") plus overrides."""
    if name not in PRESETS:
        raise InputError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return DecisionTransformerConfig(**{**PRESETS[name], **overrides})


def config_from_dict(algo: str, data: dict[str, Any]) -> AgentConfig:
    if algo not in CONFIGS:
        raise InputError(f"unknown algo {algo!r}; choose one of {sorted(CONFIGS)}")
    return CONFIGS[algo].from_dict(data)


def config_fields(cls: type) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))
