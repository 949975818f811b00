"""Stateful rollout policies for N environments at once (the :class:`flowrl.envs.Policy` protocol).

``DTPolicy`` keeps each environment's last K steps (states, actions, returns-to-go, timesteps), resets one
environment without touching the others, and conditions on a target return. With Flow-Attention it also
keeps the trunk's recurrent state: while an episode is shorter than the context K, the model's window
*is* the whole episode, so each new step costs 2–3 tokens against a constant-size state instead of a
forward over the window. Once the window starts to slide, the oldest step leaves the window; the flow
normalisers are prefix sums from the window's start, so dropping a token changes every later one, and
the window is recomputed (one batched forward for all such envs). Both paths give the same actions.
"""

from __future__ import annotations

import numpy as np
import torch
from flowrl.agents.models import STATE_TOKEN, TOKENS_PER_STEP

from flowrl.ops import FlowState

__all__ = ["DTPolicy", "BCPolicy"]


class BCPolicy:
    """Memoryless: act on the current observation."""

    def __init__(self, agent):
        self.agent = agent

    def reset(self, env_mask: np.ndarray, target_return: float | None = None) -> None:
        pass

    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        return self.agent.act(observations)


class DTPolicy:
    """Decision Transformer rollout policy with per-environment context (and recurrent state for flow)."""

    def __init__(self, agent, *, recurrent: bool | None = None):
        cfg = agent.config
        if recurrent is None:
            recurrent = cfg.attention == "flow"
        if recurrent and cfg.attention != "flow":
            raise ValueError("recurrent rollout needs attention='flow' (softmax windows are recomputed)")
        self.agent, self.model, self.recurrent = agent, agent.model, recurrent
        self.K = cfg.context
        self.n = 0  # number of environments

    # ------------------------------------------------------------------ protocol
    def reset(self, env_mask: np.ndarray, target_return: float | None = None) -> None:
        env_mask = np.asarray(env_mask, dtype=bool)
        if target_return is None:
            raise ValueError("a Decision Transformer needs a target return (e.g. the env's default targets)")
        if env_mask.ndim != 1:
            raise ValueError(f"env_mask must be a 1-d bool array, got shape {env_mask.shape}")
        if env_mask.shape[0] != self.n:
            if not env_mask.all():
                raise ValueError(f"first reset must cover all environments; got {env_mask.shape[0]} != {self.n}")
            self._allocate(env_mask.shape[0])
        rows = np.flatnonzero(env_mask)
        self.states[rows] = 0.0
        self.actions[rows] = 0.0
        self.rtg[rows] = 0.0
        self.timesteps[rows] = 0
        self.length[rows] = 0
        self.t[rows] = 0
        self.rtg_now[rows] = float(target_return)
        if self.recurrent:
            mask = torch.as_tensor(env_mask, device=self.agent.device)
            self.trunk_state = [s.reset(mask) for s in self.trunk_state]

    @torch.no_grad()
    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float32)
        if obs.shape != (self.n, self.agent.obs_dim):
            raise ValueError(f"observations have shape {obs.shape}, expected ({self.n}, {self.agent.obs_dim})")
        started = self.t > 0
        self.rtg_now[started] -= np.asarray(last_rewards, dtype=np.float64)[started]
        # append (s_t, R_t, t) to every env's window, sliding full windows left by one step
        full = self.length == self.K
        if full.any():
            for buf in (self.states, self.actions, self.rtg, self.timesteps):
                buf[full, :-1] = buf[full, 1:]
        self.length[~full] += 1
        last = self.length - 1
        rows = np.arange(self.n)
        self.states[rows, last] = obs
        self.actions[rows, last] = 0.0
        self.rtg[rows, last] = self.rtg_now
        self.timesteps[rows, last] = np.minimum(self.t, self.agent.config.max_timestep - 1)

        out = np.empty((self.n, self.agent.act_dim), np.float32)
        in_state = (self.t < self.K) if self.recurrent else np.zeros(self.n, bool)
        if in_state.any():
            out[in_state] = self._act_recurrent(np.flatnonzero(in_state))
        if (~in_state).any():
            out[~in_state] = self._act_window(np.flatnonzero(~in_state))
        self.actions[rows, last] = out
        self.t += 1
        return out

    # ------------------------------------------------------------------ internals
    def _allocate(self, n: int) -> None:
        K, a = self.K, self.agent
        self.n = n
        self.states = np.zeros((n, K, a.obs_dim), np.float32)
        self.actions = np.zeros((n, K, a.act_dim), np.float32)
        self.rtg = np.zeros((n, K), np.float64)
        self.timesteps = np.zeros((n, K), np.int64)
        self.length = np.zeros(n, np.int64)  # steps in the window
        self.t = np.zeros(n, np.int64)  # steps taken in the episode
        self.rtg_now = np.zeros(n, np.float64)
        if self.recurrent:
            cfg = a.config
            dh = cfg.dim // cfg.heads
            self.trunk_state = [
                FlowState.zeros(
                    n,
                    cfg.heads,
                    dh,
                    dh,
                    dtype=torch.float64 if a.dtype == torch.float64 else torch.float32,
                    device=a.device,
                )
                for _ in range(cfg.depth)
            ]

    def _step_tokens(self, rows: np.ndarray, j: np.ndarray) -> torch.Tensor:
        """Embeddings [len(rows), 3, dim] of the (R̂, s, a) triple at window slot ``j`` of each row."""
        a = self.agent
        s = self.model.normalizer(a._tensor(self.states[rows, j]))[:, None]
        act = a._tensor(self.actions[rows, j])[:, None]
        r = a._tensor(self.rtg[rows, j] * a.config.reward_scale)[:, None, None]
        ts = a._tensor(self.timesteps[rows, j], torch.long)[:, None]
        return self.model.embed(s, act, r, ts)

    def _act_recurrent(self, rows: np.ndarray) -> np.ndarray:
        """Feed only the new tokens, [a_{t-1}, R̂_t, s_t] (or [R̂_0, s_0]), against the carried state."""
        out = np.empty((len(rows), self.agent.act_dim), np.float32)
        first = self.t[rows] == 0
        for group, n_prev in ((rows[first], 0), (rows[~first], 1)):
            if len(group) == 0:
                continue
            j = self.length[group] - 1
            now = self._step_tokens(group, j)[:, :2]  # R̂_t, s_t
            if n_prev:
                prev_action = self._step_tokens(group, j - 1)[:, 2:]  # a_{t-1}
                now = torch.cat([prev_action, now], dim=1)
            idx = torch.as_tensor(group, device=self.agent.device)
            sub = [s.select(idx) for s in self.trunk_state]
            h, sub = self.model.trunk(now, state=sub, return_state=True)
            for layer, s in zip(self.trunk_state, sub):
                for full_field, new_field in zip(layer, s):
                    full_field[idx] = new_field.to(full_field.dtype)
            pred = self.model.predict_action(h[:, -1])
            out[first if n_prev == 0 else ~first] = pred.float().cpu().numpy()
        return out

    def _act_window(self, rows: np.ndarray) -> np.ndarray:
        """Recompute each row's window (right-padded to K) and read the action at its last state token."""
        a = self.agent
        s = self.model.normalizer(a._tensor(self.states[rows]))
        h = self.model(
            s,
            a._tensor(self.actions[rows]),
            a._tensor(self.rtg[rows, :, None] * a.config.reward_scale),
            a._tensor(self.timesteps[rows], torch.long),
        )  # (R, K, act) — predictions at every state token
        last = torch.as_tensor(self.length[rows] - 1, device=a.device)
        pred = h[torch.arange(len(rows), device=a.device), last]
        return pred.float().cpu().numpy()


assert STATE_TOKEN == 1 and TOKENS_PER_STEP == 3  # the token order the recurrent path feeds
