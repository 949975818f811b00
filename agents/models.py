"""The networks: the Decision Transformer on the flowrl trunk, and the BC MLP.

Token layout (per timestep t): [R̂_t, s_t, a_t], interleaved into a causal sequence of 3K tokens, each
token plus the embedding of its timestep (none with ``timestep_embedding="none"``). The action a_t is
predicted from the **state token at t** (it has seen R̂_≤t, s_≤t, a_<t): the original implementation's
off-by-one (kzl/decision-transformer issue 53) does not recur, and a test checks that a_t never depends on
tokens after s_t.
"""

from __future__ import annotations

import torch
from flowrl.agents.config import BCConfig, DecisionTransformerConfig
from torch import Tensor, nn

from flowrl.layers import Dropout
from flowrl.models import Flowformer

__all__ = ["DecisionTransformer", "BCNetwork", "TOKENS_PER_STEP", "STATE_TOKEN"]

TOKENS_PER_STEP = 3
STATE_TOKEN = 1  # offset of s_t within the (R̂_t, s_t, a_t) triple
_STATE_TOKENS = slice(STATE_TOKEN, None, TOKENS_PER_STEP)


class _Normalizer(nn.Module):
    """State mean/std as buffers, so they travel inside the weights file."""

    state_mean: Tensor
    state_std: Tensor

    def __init__(self, obs_dim: int):
        super().__init__()
        self.register_buffer("state_mean", torch.zeros(obs_dim))
        self.register_buffer("state_std", torch.ones(obs_dim))

    def set(self, mean, std) -> None:
        self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.state_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def forward(self, states: Tensor) -> Tensor:
        return (states - self.state_mean) / self.state_std


class DecisionTransformer(nn.Module):
    """returns-to-go, states, actions, timesteps ``[B, T, ·]`` -> predicted actions ``[B, T, act_dim]``.

    Inputs: ``states`` [B, T, obs_dim] (normalised), ``actions`` [B, T, act_dim], ``returns_to_go``
    [B, T, 1] (scaled), ``timesteps`` [B, T] int64. Padding, if any, is on the right (see
    :class:`flowrl.envs.ContextBatch`): causal attention keeps it from reaching real tokens.
    """

    def __init__(self, config: DecisionTransformerConfig, obs_dim: int, act_dim: int):
        super().__init__()
        self.config, self.obs_dim, self.act_dim = config, obs_dim, act_dim
        d = config.dim
        self.normalizer = _Normalizer(obs_dim)
        # no table, no time input: a memory model can still tell time from its recurrent state
        self.embed_timestep = nn.Embedding(config.max_timestep, d) if config.timestep_embedding == "table" else None
        self.embed_return = nn.Linear(1, d)
        self.embed_state = nn.Linear(obs_dim, d)
        self.embed_action = nn.Linear(act_dim, d)
        self.embed_norm = nn.LayerNorm(d)
        self.embed_dropout = Dropout(config.dropout)
        self.trunk = Flowformer(config.trunk_config())
        self.predict_action = nn.Sequential(nn.Linear(d, act_dim), nn.Tanh())
        self.apply(_init_weights)

    def embed(self, states: Tensor, actions: Tensor, returns_to_go: Tensor, timesteps: Tensor) -> Tensor:
        """Interleaved token embeddings [B, 3T, dim]."""
        B, T = timesteps.shape
        time = self._time(timesteps)  # (B, T, d) or a scalar 0
        tokens = torch.stack(
            [
                self.embed_return(returns_to_go) + time,
                self.embed_state(states) + time,
                self.embed_action(actions) + time,
            ],
            dim=2,
        )  # (B, T, 3, d)
        return self.embed_dropout(self.embed_norm(tokens.reshape(B, TOKENS_PER_STEP * T, -1)))

    def embed_step(self, prev_actions: Tensor, returns_to_go: Tensor, states: Tensor, timesteps: Tensor) -> Tensor:
        """The tokens step t appends to a running sequence, [a_{t-1}, R̂_t, s_t]: [B, 3, dim].

        ``prev_actions`` [B, act_dim] (a_{t-1}), ``returns_to_go`` [B, 1] (scaled), ``states`` [B, obs_dim]
        (normalised), ``timesteps`` [B] int64 (t). Equal to tokens 3t-1 .. 3t+1 of :meth:`embed` over the
        episode; at t = 0 there is no a_{-1}: use tokens [:, 1:].
        """
        time = self._time(torch.stack([(timesteps - 1).clamp_min(0), timesteps], 1))  # (B, 2, d) or 0
        if not torch.is_tensor(time):
            time = torch.zeros(1, 2, 1, dtype=states.dtype, device=states.device)
        tokens = torch.stack(
            [
                self.embed_action(prev_actions) + time[:, 0],
                self.embed_return(returns_to_go) + time[:, 1],
                self.embed_state(states) + time[:, 1],
            ],
            dim=1,
        )  # (B, 3, d)
        return self.embed_dropout(self.embed_norm(tokens))

    def _time(self, timesteps: Tensor) -> Tensor | float:
        """Timestep embeddings [*timesteps.shape, dim] (steps past the table reuse its last entry), or 0."""
        if self.embed_timestep is None:
            return 0.0
        return self.embed_timestep(timesteps.clamp(0, self.config.max_timestep - 1))

    def forward(
        self, states: Tensor, actions: Tensor, returns_to_go: Tensor, timesteps: Tensor, *, state: list | None = None
    ) -> Tensor:
        """``state`` (flow attention: one :class:`flowrl.ops.FlowState` per block) continues the episode
        whose tokens produced it, as :func:`flowrl.agents.memory.prefix_state` computes it."""
        # only the state tokens are read: the trunk's last block computes nothing else
        x = self.embed(states, actions, returns_to_go, timesteps)
        h = self.trunk(x, select=_STATE_TOKENS, state=state)  # (B, T, d)
        return self.predict_action(h)  # (B, T, act_dim)


class BCNetwork(nn.Module):
    """states [B, obs_dim] (normalised) -> actions [B, act_dim] in [-1, 1]."""

    def __init__(self, config: BCConfig, obs_dim: int, act_dim: int):
        super().__init__()
        self.config, self.obs_dim, self.act_dim = config, obs_dim, act_dim
        self.normalizer = _Normalizer(obs_dim)
        layers: list[nn.Module] = []
        width = obs_dim
        for _ in range(config.layers):
            layers += [nn.Linear(width, config.hidden), nn.ReLU(), Dropout(config.dropout)]
            width = config.hidden
        layers += [nn.Linear(width, act_dim), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, states: Tensor) -> Tensor:
        return self.net(states)


def _init_weights(module: nn.Module) -> None:
    # GPT-2 initialisation, as the original Decision Transformer inherits from Hugging Face GPT-2
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
