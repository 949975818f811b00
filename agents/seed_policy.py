"""Rollout policies for the S models of a seed-batched run (:mod:`flowrl.agents.stacking`): S groups of N
environments, environment j acting for seed ``j // N``, one batched forward per step for all S·N of them.

- :class:`SeedDTPolicy`: Decision Transformers with the ``window`` rollout (the default, as trained): every
  step recomputes each environment's window of the last K steps, right-padded while the episode is shorter,
  in one forward of the stacked model over S·N windows, and reads the action at each window's last state
  token. This is the computation :class:`flowrl.agents.DTPolicy` does for one model (which may feed a
  Flow-Attention state instead: the same actions up to rounding).
- :class:`SeedBCPolicy`: behaviour cloning, one stacked forward over the S·N observations.
- :class:`SplitPolicy`: any S single-model policies side by side (S calls per step), for what the stacked
  model does not run: the ``staggered`` and ``episode`` rollouts.

Drive them with :func:`flowrl.envs.evaluate_groups`, which gives every group the same episodes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from flowrl.agents.models import BCNetwork, DecisionTransformer
from flowrl.agents.policy import ContextWindows, check_reset, observe
from flowrl.agents.stacking import seed_count
from torch import nn

__all__ = ["SeedDTPolicy", "SeedBCPolicy", "SplitPolicy", "make_seed_policy"]


def _groups(n: int, seeds: int) -> int:
    if n % seeds:
        raise ValueError(f"{n} environments do not split into {seeds} equal groups (one per seed)")
    return n // seeds


class SeedDTPolicy:
    """S Decision Transformers in one stacked module, window rollout (see the module doc).

    Args:
        agent: any one of the S agents (for its config and observation/action sizes).
        model: the stacked :class:`flowrl.agents.models.DecisionTransformer`.
    """

    def __init__(self, agent, model: DecisionTransformer):
        self.agent, self.model = agent, model
        self.K, self.seeds = agent.config.context, seed_count(model)
        self.observation_map = agent.observation_map  # evaluate_groups() maps the live observations with it
        self.n = 0
        self.t = np.zeros(0, np.int64)  # per environment: steps taken in the episode
        self.rtg_now = np.zeros(0, np.float64)  # per environment: the return still to collect

    def reset(self, env_mask: np.ndarray, target_return: float | None = None) -> None:
        if target_return is None:
            raise ValueError("a Decision Transformer needs a target return (e.g. the env's default targets)")
        env_mask = check_reset(env_mask, self.n)
        if env_mask.all():
            self._allocate(env_mask.shape[0])
        rows = np.flatnonzero(env_mask)
        self.rtg_now[rows] = float(target_return)
        self.t[rows] = 0
        self.window.clear(rows)

    def _allocate(self, n: int) -> None:
        _groups(n, self.seeds)
        a, K = self.agent, self.K
        self.n = n
        p = next(self.model.parameters())
        self.dtype, self.device = p.dtype, p.device
        self.t = np.zeros(n, np.int64)
        self.rtg_now = np.zeros(n, np.float64)
        self.window = ContextWindows(n, K, a.obs_dim, a.act_dim, np.float32)

    def _tensor(self, x, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=dtype or self.dtype, device=self.device)

    @torch.no_grad()
    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        obs = observe(observations, last_rewards, self.t, self.rtg_now, self.agent.obs_dim)
        if self.model.training:
            self.model.eval()
        w = self.window
        last = w.push(obs, self.rtg_now, self.t)
        rows = np.arange(self.n)
        # the rows past each window's end are zeros: causal attention keeps them from the real tokens
        pred = self.model(
            self.model.normalizer(self._tensor(w.states)),
            self._tensor(w.actions),
            self._tensor(w.rtg[..., None] * self.agent.config.reward_scale),
            self._tensor(w.timesteps, torch.long),
        )  # (S·N, K, act_dim)
        out = pred[torch.as_tensor(rows, device=self.device), torch.as_tensor(last, device=self.device)]
        out = out.float().cpu().numpy()
        w.actions[rows, last] = out
        self.t += 1
        return out


class SeedBCPolicy:
    """S behaviour-cloning MLPs in one stacked module: one forward over the S·N observations."""

    def __init__(self, agent, model: BCNetwork):
        self.agent, self.model, self.seeds = agent, model, seed_count(model)
        self.observation_map = agent.observation_map
        self.n = 0

    def reset(self, env_mask: np.ndarray, target_return: float | None = None) -> None:
        env_mask = check_reset(env_mask, self.n)
        if env_mask.all():
            _groups(env_mask.shape[0], self.seeds)
            self.n = env_mask.shape[0]

    @torch.no_grad()
    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        if self.model.training:
            self.model.eval()
        p = next(self.model.parameters())
        x = torch.as_tensor(np.asarray(observations, dtype=np.float32), dtype=p.dtype, device=p.device)
        return self.model(self.model.normalizer(x)).float().cpu().numpy()


class SplitPolicy:
    """S single-model policies side by side: environments ``s·N .. s·N+N-1`` go to ``policies[s]``."""

    def __init__(self, policies: Sequence):
        self.policies = list(policies)
        self.observation_map = getattr(self.policies[0], "observation_map", None)  # one dataset: one map
        self.n = 0

    def reset(self, env_mask: np.ndarray, target_return: float | None = None) -> None:
        env_mask = check_reset(env_mask, self.n)
        if env_mask.all():
            self.n = env_mask.shape[0]
        per = _groups(self.n, len(self.policies))
        for s, policy in enumerate(self.policies):
            part = env_mask[s * per : (s + 1) * per]
            if part.any():
                policy.reset(part, target_return)

    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        per = self.n // len(self.policies)
        return np.concatenate(
            [
                np.asarray(p.act(observations[s * per : (s + 1) * per], last_rewards[s * per : (s + 1) * per]))
                for s, p in enumerate(self.policies)
            ]
        )


def make_seed_policy(agents: Sequence, model: nn.Module, *, rollout: str = "window"):
    """The batched policy for ``agents`` (the S agents, in seed order) whose weights ``model`` stacks.

    ``window`` DT rollouts and BC run as one stacked forward; other rollouts fall back to a
    :class:`SplitPolicy` over the agents' own policies, which must then hold the current weights.
    """
    algo = agents[0].algo
    if rollout == "auto":  # the model's own rollout (TrainConfig.eval_rollout)
        rollout = getattr(agents[0].config, "default_rollout", "window")
    if algo == "bc":
        agents[0].make_policy(rollout=rollout)  # rejects DT-only rollout options as a single BC run does
        assert isinstance(model, BCNetwork), "a stacked model has the class of the models it stacks"
        return SeedBCPolicy(agents[0], model)
    if rollout == "window" and algo == "dt":
        agents[0].make_policy(rollout=rollout)
        assert isinstance(model, DecisionTransformer), "a stacked model has the class of the models it stacks"
        return SeedDTPolicy(agents[0], model)
    return SplitPolicy([a.make_policy(rollout=rollout) for a in agents])
