"""Stateful rollout policies for N environments at once (the :class:`flowrl.envs.Policy` protocol).

``DTPolicy`` conditions on a target return, resets one environment without touching the others, and
offers three ways to roll a Decision Transformer forward (``rollout=``):

- ``"window"`` (the default; the original DT's evaluation): at every step the model sees the last K
  steps. Softmax attention recomputes that window every step. Flow-Attention does the same once the
  window slides, but while an episode is shorter than K the window *is* the episode, so it feeds only
  the 2-3 new tokens against its constant-size recurrent state. Both give the same actions.
- ``"staggered"`` (Flow-Attention): ``ceil(K / s)`` recurrent states per environment, restarted in turn
  every ``s = restart_every`` steps (default ``ceil(K / 2)``). The oldest state that is at most K steps
  old acts, so the model sees a window of the last K-s+1 to K steps, always starting at a step boundary
  as in training (while t < K: the whole episode, as in ``"window"``). Each step costs 3 tokens per state
  instead of a 3K-token window, and every action equals a from-scratch forward over the steps since the
  acting state started (a test checks this). ``restart_every=1`` reproduces ``"window"`` exactly.
- ``"episode"`` (Flow-Attention): one recurrent state per environment over the whole episode, no window
  at all (the model sees more than the K steps it was trained on; cheapest, check its scores).
"""

from __future__ import annotations

import numpy as np
import torch
from flowrl.agents.models import STATE_TOKEN, TOKENS_PER_STEP

from flowrl.ops import FlowState, state_updates_in_place

__all__ = ["DTPolicy", "BCPolicy", "ROLLOUTS"]

ROLLOUTS = ("window", "staggered", "episode")
_LAST = slice(-1, None)


class BCPolicy:
    """Memoryless: act on the current observation."""

    def __init__(self, agent):
        self.agent = agent

    def reset(self, env_mask: np.ndarray, target_return: float | None = None) -> None:
        pass

    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        return self.agent.act(observations)


class DTPolicy:
    """Decision Transformer rollout policy with per-environment context (see the module docstring)."""

    def __init__(self, agent, *, rollout: str = "window", restart_every: int | None = None):
        cfg = agent.config
        if rollout not in ROLLOUTS:
            raise ValueError(f"unknown rollout {rollout!r}; choose one of {', '.join(ROLLOUTS)}")
        if rollout != "window" and cfg.attention != "flow":
            raise ValueError(f"rollout={rollout!r} needs attention='flow' (softmax windows are recomputed)")
        K = cfg.context
        if restart_every is not None and rollout != "staggered":
            raise ValueError("restart_every is for rollout='staggered'")
        s = -(-K // 2) if restart_every is None else int(restart_every)
        if not 1 <= s <= K:
            raise ValueError(f"restart_every must be in [1, context={K}], got {restart_every}")
        self.agent, self.model, self.rollout = agent, agent.model, rollout
        self.K = K
        self.recurrent = cfg.attention == "flow"  # window mode: recurrent while the episode fits in K
        self.restart_every = s if rollout == "staggered" else None
        self.slots = -(-K // s) if rollout == "staggered" else 1  # recurrent states per environment
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
        self.t[rows] = 0
        self.rtg_now[rows] = float(target_return)
        if self.rollout == "window":
            self.states[rows] = 0.0
            self.actions[rows] = 0.0
            self.rtg[rows] = 0.0
            self.timesteps[rows] = 0
            self.length[rows] = 0
            if self.recurrent:
                mask = torch.as_tensor(env_mask, device=self.agent.device)
                self.trunk_state = [s.reset(mask) for s in self.trunk_state]
        else:  # slots restart (and are zeroed) lazily, when their turn comes in the new episode
            self.prev_action[rows] = 0.0
            self.slot_start[rows] = -1

    @torch.no_grad()
    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        obs = np.asarray(observations, dtype=np.float32)
        if obs.shape != (self.n, self.agent.obs_dim):
            raise ValueError(f"observations have shape {obs.shape}, expected ({self.n}, {self.agent.obs_dim})")
        started = self.t > 0
        self.rtg_now[started] -= np.asarray(last_rewards, dtype=np.float64)[started]
        if self.model.training:  # no dropout in rollouts (checked per step: .eval() walks every module)
            self.model.eval()
        out = self._act_window(obs) if self.rollout == "window" else self._act_recurrent(obs)
        self.t += 1
        return out

    # ------------------------------------------------------------------ internals
    def _allocate(self, n: int) -> None:
        K, a = self.K, self.agent
        self.n = n
        self.t = np.zeros(n, np.int64)  # steps taken in the episode
        self.rtg_now = np.zeros(n, np.float64)
        if self.rollout == "window":
            self.states = np.zeros((n, K, a.obs_dim), np.float32)
            self.actions = np.zeros((n, K, a.act_dim), np.float32)
            self.rtg = np.zeros((n, K), np.float64)
            self.timesteps = np.zeros((n, K), np.int64)
            self.length = np.zeros(n, np.int64)  # steps in the window
            rows = n
        else:
            self.prev_action = np.zeros((n, a.act_dim), np.float32)
            self.slot_start = np.full((n, self.slots), -1, np.int64)  # episode step a slot started at
            rows = n * self.slots  # row i * slots + j: environment i, slot j
        if self.recurrent:
            cfg = a.config
            dh = cfg.dim // cfg.heads
            dtype = torch.float64 if a.dtype == torch.float64 else torch.float32
            self.trunk_state = [
                FlowState.zeros(rows, cfg.heads, dh, dh, dtype=dtype, device=a.device) for _ in range(cfg.depth)
            ]

    def _tokens(self, states, actions, rtg, timesteps) -> torch.Tensor:
        """Token embeddings [B, 3T, dim] of raw (unnormalised, unscaled) numpy steps [B, T, ·]."""
        a, m = self.agent, self.model
        return m.embed(
            m.normalizer(a._tensor(states)),
            a._tensor(actions),
            a._tensor(np.asarray(rtg)[..., None] * a.config.reward_scale),
            a._tensor(timesteps, torch.long),  # embed() clamps to max_timestep - 1
        )

    def _run_rows(self, x: torch.Tensor, rows: np.ndarray | None, *, fresh: bool = False) -> torch.Tensor:
        """Feed tokens x [R, L, dim] to the recurrent states of ``rows`` (None: all rows, in order; ``fresh``:
        restart those states first); returns the trunk output at each row's last token, [R, dim]."""
        if rows is None:
            with state_updates_in_place():  # the policy owns its states: no copy of the D×M matrices
                h, self.trunk_state = self.model.trunk(x, state=self.trunk_state, return_state=True, select=_LAST)
            return h[:, 0]
        idx = torch.as_tensor(rows, device=self.agent.device)
        if fresh:
            sub = [FlowState(*(torch.zeros_like(f[: len(rows)]) for f in s)) for s in self.trunk_state]
        else:
            sub = [s.select(idx) for s in self.trunk_state]
        with state_updates_in_place():
            h, sub = self.model.trunk(x, state=sub, return_state=True, select=_LAST)
        for layer, new in zip(self.trunk_state, sub):
            for full_field, new_field in zip(layer, new):
                full_field.index_copy_(0, idx, new_field.to(full_field.dtype))
        return h[:, 0]

    def _act_recurrent(self, obs: np.ndarray) -> np.ndarray:
        """Staggered / episode rollouts: 3 new tokens [a_{t-1}, R̂_t, s_t] per live state, no window."""
        n, S, K = self.n, self.slots, self.K
        t = self.t
        # the tokens of steps (t-1, t); [a_{t-1}, R̂_t, s_t] are tokens 2..4 of the 6 (the rest are unused)
        steps = np.zeros((n, 2, self.agent.obs_dim), np.float32)
        steps[:, 1] = obs
        acts = np.zeros((n, 2, self.agent.act_dim), np.float32)
        acts[:, 0] = self.prev_action
        rtg = np.zeros((n, 2))
        rtg[:, 1] = self.rtg_now
        ts = np.stack([np.maximum(t - 1, 0), t], axis=1)
        tok = self._tokens(steps, acts, rtg, ts)[:, 2:5]  # (n, 3, dim)

        if self.rollout == "episode":
            restart = t == 0
            slot = np.zeros(n, np.int64)
        else:
            every = self.restart_every
            restart = t % every == 0
            slot = (t // every) % S
        envs = np.flatnonzero(restart)
        self.slot_start[envs, slot[envs]] = t[envs]
        fresh = (self.slot_start == t[:, None]).ravel()
        live = (self.slot_start >= 0).ravel() & ~fresh
        rows_fresh, rows_live = np.flatnonzero(fresh), np.flatnonzero(live)

        if len(rows_live) == n * S:  # the usual step: every state continues, one call on the whole state
            h = self._run_rows(tok.repeat_interleave(S, 0) if S > 1 else tok, None)
        else:
            h = torch.empty(n * S, self.agent.config.dim, dtype=tok.dtype, device=tok.device)
            if len(rows_fresh):  # a restarted state reads [R̂_t, s_t] only: its window starts at step t
                env_of = torch.as_tensor(rows_fresh // S, device=tok.device)
                h[rows_fresh] = self._run_rows(tok[env_of, 1:], rows_fresh, fresh=True)
            if len(rows_live):
                env_of = torch.as_tensor(rows_live // S, device=tok.device)
                h[rows_live] = self._run_rows(tok[env_of], rows_live)

        # act with the oldest state whose window is at most K steps long
        age = np.where(self.slot_start >= 0, t[:, None] - self.slot_start + 1, -1)
        if self.rollout == "staggered":
            age = np.where(age <= K, age, -1)
        acting = np.arange(n) * S + age.argmax(1)
        pred = self.model.predict_action(h[torch.as_tensor(acting, device=h.device)])
        out = pred.float().cpu().numpy()
        self.prev_action = out.copy()
        return out

    def _act_window(self, obs: np.ndarray) -> np.ndarray:
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
        self.timesteps[rows, last] = self.t

        out = np.empty((self.n, self.agent.act_dim), np.float32)
        in_state = (self.t < self.K) if self.recurrent else np.zeros(self.n, bool)
        if in_state.any():
            out[in_state] = self._act_growing(np.flatnonzero(in_state))
        if (~in_state).any():
            out[~in_state] = self._act_full_window(np.flatnonzero(~in_state))
        self.actions[rows, last] = out
        return out

    def _act_growing(self, rows: np.ndarray) -> np.ndarray:
        """Window mode while t < K: feed only [a_{t-1}, R̂_t, s_t] (or [R̂_0, s_0]) against the state."""
        out = np.empty((len(rows), self.agent.act_dim), np.float32)
        first = self.t[rows] == 0
        for group, is_first in ((rows[first], True), (rows[~first], False)):
            if len(group) == 0:
                continue
            j = self.length[group] - 1
            if is_first:
                x = self._tokens(
                    self.states[group, j, None],
                    self.actions[group, j, None],
                    self.rtg[group, j, None],
                    self.timesteps[group, j, None],
                )[:, :2]
            else:
                two = np.stack([j - 1, j], axis=1)
                g = group[:, None]
                x = self._tokens(self.states[g, two], self.actions[g, two], self.rtg[g, two], self.timesteps[g, two])[
                    :, 2:5
                ]
            h = self._run_rows(x, group)
            out[first if is_first else ~first] = self.model.predict_action(h).float().cpu().numpy()
        return out

    def _act_full_window(self, rows: np.ndarray) -> np.ndarray:
        """Recompute each row's window (right-padded to K) and read the action at its last state token."""
        a = self.agent
        pred = self.model(
            self.model.normalizer(a._tensor(self.states[rows])),
            a._tensor(self.actions[rows]),
            a._tensor(self.rtg[rows, :, None] * a.config.reward_scale),
            a._tensor(self.timesteps[rows], torch.long),
        )  # (R, K, act) — predictions at every state token
        last = torch.as_tensor(self.length[rows] - 1, device=a.device)
        return pred[torch.arange(len(rows), device=a.device), last].float().cpu().numpy()


assert STATE_TOKEN == 1 and TOKENS_PER_STEP == 3  # the token order the recurrent path feeds
