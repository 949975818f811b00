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
  at all. For a memory model (``DecisionTransformerConfig.memory``, see :mod:`flowrl.agents.memory`) this is
  the default and exactly the computation it was trained on; a K-window model sees more than the K steps it
  was trained on (cheapest, check its scores).

Models with a timestep table act in episodes of at most ``max_timestep`` steps (``max_episode_steps``;
:func:`flowrl.envs.evaluate` refuses longer time limits before the first step).

The recurrent states live in a :class:`flowrl.models.FlowDecoder`, which computes what the trunk's stateful
forward would: on a CPU in one call of its C++ kernel per step (:mod:`flowrl.ops.native`), else with fused
projections and states updated in place.
"""

from __future__ import annotations

import numpy as np
import torch
from flowrl.agents.models import STATE_TOKEN, TOKENS_PER_STEP

from flowrl.errors import InputError
from flowrl.models import FlowDecoder
from flowrl.ops import native

__all__ = ["DTPolicy", "BCPolicy", "ContextWindows", "ROLLOUTS", "check_reset", "observe"]

ROLLOUTS = ("window", "staggered", "episode")


def check_reset(env_mask: np.ndarray, n: int) -> np.ndarray:
    """``env_mask`` as a 1-d bool array; a reset of part of the environments needs ``n`` (the environments
    of the last full reset) entries."""
    env_mask = np.asarray(env_mask, dtype=bool)
    if env_mask.ndim != 1:
        raise ValueError(f"env_mask must be a 1-d bool array, got shape {env_mask.shape}")
    if env_mask.shape[0] != n and not env_mask.all():
        raise ValueError(f"first reset must cover all environments; got {env_mask.shape[0]} != {n}")
    return env_mask


def observe(observations: np.ndarray, last_rewards: np.ndarray, t: np.ndarray, rtg_now: np.ndarray, obs_dim: int):
    """The step's observations as float32 [N, obs_dim] (their shape checked), once the last rewards [N] are
    taken off the returns-to-go ``rtg_now`` [N] (in place) of the environments past their first step
    (``t`` [N]: steps taken in the episode)."""
    obs = np.asarray(observations, dtype=np.float32)
    if obs.shape != (len(t), obs_dim):
        raise ValueError(f"observations have shape {obs.shape}, expected ({len(t)}, {obs_dim})")
    started = t > 0
    rtg_now[started] -= np.asarray(last_rewards, dtype=np.float64)[started]
    return obs


class ContextWindows:
    """The last K steps of N environments, oldest first, right-padded with zeros while an episode is shorter:
    states [N, K, obs_dim] (float32), actions [N, K, act_dim] (``act_dtype``), returns-to-go [N, K] (float64,
    unscaled), timesteps [N, K]; ``length`` [N]: the steps each window holds."""

    def __init__(self, n: int, K: int, obs_dim: int, act_dim: int, act_dtype: type = np.float32):
        self.K = K
        self.states = np.zeros((n, K, obs_dim), np.float32)
        self.actions: np.ndarray = np.zeros((n, K, act_dim), act_dtype)
        self.rtg = np.zeros((n, K), np.float64)
        self.timesteps = np.zeros((n, K), np.int64)
        self.length = np.zeros(n, np.int64)

    def clear(self, rows: np.ndarray) -> None:
        """Empty the windows of ``rows`` (new episodes)."""
        for buf in (self.states, self.actions, self.rtg, self.timesteps, self.length):
            buf[rows] = 0

    def push(self, obs: np.ndarray, rtg: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Append step (s_t, R_t, t) with a zero action to every window, full windows sliding left by one
        step; returns each window's index of the new step, [N]."""
        full = self.length == self.K
        if full.any():
            for buf in (self.states, self.actions, self.rtg, self.timesteps):
                buf[full, :-1] = buf[full, 1:]
        self.length[~full] += 1
        last = self.length - 1
        rows = np.arange(len(last))
        self.states[rows, last] = obs
        self.actions[rows, last] = 0.0
        self.rtg[rows, last] = rtg
        self.timesteps[rows, last] = t
        return last


class BCPolicy:
    """Memoryless: act on the current observation."""

    def __init__(self, agent):
        self.agent = agent
        self.observation_map = agent.observation_map  # evaluate() maps the live observations with it

    def reset(self, env_mask: np.ndarray, target_return: float | None = None) -> None:
        pass

    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        return self.agent.act(observations)


class DTPolicy:
    """Decision Transformer rollout policy with per-environment context (see the module docstring)."""

    def __init__(self, agent, *, rollout: str | None = None, restart_every: int | None = None):
        cfg = agent.config
        rollout = rollout or cfg.default_rollout
        if rollout not in ROLLOUTS:
            raise InputError(f"unknown rollout {rollout!r}; choose one of {', '.join(ROLLOUTS)}")
        if rollout != "window" and cfg.attention != "flow":
            raise InputError(f"rollout={rollout!r} needs attention='flow' (softmax windows are recomputed)")
        K = cfg.context
        if restart_every is not None and rollout != "staggered":
            raise InputError("restart_every is for rollout='staggered'")
        s = -(-K // 2) if restart_every is None else int(restart_every)
        if not 1 <= s <= K:
            raise InputError(f"restart_every must be in [1, context={K}], got {restart_every}")
        self.agent, self.model, self.rollout = agent, agent.model, rollout
        self.observation_map = agent.observation_map  # evaluate() maps the live observations with it
        self.max_episode_steps: int | None = cfg.time_limit  # the longest episode the timestep table covers
        self.K = K
        self.recurrent = cfg.attention == "flow"  # window mode: recurrent while the episode fits in K
        self.restart_every = s if rollout == "staggered" else None
        self.slots = -(-K // s) if rollout == "staggered" else 1  # recurrent states per environment
        self.n = 0  # number of environments
        self.t = np.zeros(0, np.int64)  # per environment: steps taken in the episode
        self.rtg_now = np.zeros(0, np.float64)  # per environment: the return still to collect
        if self.recurrent:
            native.library()  # build the decode kernel now, not in each forked evaluation worker at once

    # ------------------------------------------------------------------ protocol
    def reset(self, env_mask: np.ndarray, target_return: float | None = None) -> None:
        if target_return is None:
            raise InputError("a Decision Transformer needs a target return (e.g. the env's default targets)")
        env_mask = check_reset(env_mask, self.n)
        if env_mask.all():  # a new evaluation (the model may have trained, moved or changed dtype since)
            self._allocate(env_mask.shape[0])
        rows = np.flatnonzero(env_mask)
        self.t[rows] = 0
        self.rtg_now[rows] = float(target_return)
        if self.rollout == "window":
            self.window.clear(rows)
            if self.recurrent:
                self.decoder.reset(torch.as_tensor(rows, device=self.device))
        else:  # slots restart (and are zeroed) lazily, when their turn comes in the new episode
            self.prev_action[rows] = 0.0
            self.slot_start[rows] = -1

    @torch.no_grad()
    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        obs = observe(observations, last_rewards, self.t, self.rtg_now, self.agent.obs_dim)
        if self.model.training:  # no dropout in rollouts (checked per step: .eval() walks every module)
            self.model.eval()
        out = self._act_window(obs) if self.rollout == "window" else self._act_recurrent(obs)
        self.t += 1
        return out

    # ------------------------------------------------------------------ internals
    def _allocate(self, n: int) -> None:
        K, a = self.K, self.agent
        self.n = n
        self.dtype, self.device = a.dtype, a.device  # looked up once: both walk the modules
        self.t = np.zeros(n, np.int64)
        self.rtg_now = np.zeros(n, np.float64)
        # actions in the work dtype: a float64 model's rollout is float64 throughout
        act_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        if self.rollout == "window":
            self.window = ContextWindows(n, K, a.obs_dim, a.act_dim, act_dtype)
            rows = n
        else:
            self.prev_action = np.zeros((n, a.act_dim), act_dtype)
            self.slot_start = np.full((n, self.slots), -1, np.int64)  # episode step a slot started at
            rows = n * self.slots  # row i * slots + j: environment i, slot j
        if self.recurrent:
            self.decoder = FlowDecoder(self.model.trunk, rows)
        # in the decoder's work dtype (float64 or float32, also for 16-bit models)
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        self.step_embed = _StepEmbedding(self.model, work) if self.recurrent else None
        # window mode, native kernel: full windows are recomputed from fresh states too (one kernel call
        # instead of the module forward, ~2x faster at 10 windows; the same outputs)
        self.window_decoder = (
            FlowDecoder(self.model.trunk, n)
            if self.rollout == "window" and self.recurrent and self.decoder.native
            else None
        )

    def _tensor(self, x, dtype: torch.dtype | None = None) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), dtype=dtype or self.dtype, device=self.device)

    def _run_rows(self, x: torch.Tensor, rows: np.ndarray | None, *, fresh: bool = False) -> torch.Tensor:
        """Feed tokens x [R, L, dim] to the recurrent states of ``rows`` (None: all rows, in order; ``fresh``:
        restart those states first); returns the trunk output at each row's last token, [R, dim]."""
        if rows is None:
            return self.decoder.step(x)
        idx = torch.as_tensor(rows, device=self.device)
        if fresh:
            self.decoder.reset(idx)
        return self.decoder.step(x, idx)

    def _act_recurrent(self, obs: np.ndarray) -> np.ndarray:
        """Staggered / episode rollouts: 3 new tokens [a_{t-1}, R̂_t, s_t] per live state, no window."""
        n, S, K = self.n, self.slots, self.K
        t = self.t
        step_embed = self.step_embed
        assert step_embed is not None  # staggered and episode rollouts are for flow attention, always recurrent
        tok = step_embed.tokens(self.prev_action, self.rtg_now, obs, t)  # (n, 3, dim)

        if self.rollout == "episode":
            restart = t == 0
            slot = np.zeros(n, np.int64)
        else:
            every = self.restart_every
            assert every is not None  # set for rollout="staggered"
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
        out = step_embed.actions(h[torch.as_tensor(acting, device=h.device)] if S > 1 else h)
        self.prev_action = out.copy()
        return out

    def _act_window(self, obs: np.ndarray) -> np.ndarray:
        w = self.window
        last = w.push(obs, self.rtg_now, self.t)
        out = np.empty((self.n, self.agent.act_dim), w.actions.dtype)
        in_state = (self.t < self.K) if self.recurrent else np.zeros(self.n, bool)
        if in_state.any():
            out[in_state] = self._act_growing(np.flatnonzero(in_state))
        if (~in_state).any():
            out[~in_state] = self._act_full_window(np.flatnonzero(~in_state))
        w.actions[np.arange(self.n), last] = out
        return out

    def _act_growing(self, rows: np.ndarray) -> np.ndarray:
        """Window mode while t < K: feed only [a_{t-1}, R̂_t, s_t] (or [R̂_0, s_0]) against the state."""
        w = self.window
        out = np.empty((len(rows), self.agent.act_dim), w.actions.dtype)
        j = w.length[rows] - 1
        step_embed = self.step_embed
        assert step_embed is not None  # growing windows are fed to the recurrent states: flow attention
        x = step_embed.tokens(
            w.actions[rows, np.maximum(j - 1, 0)], w.rtg[rows, j], w.states[rows, j], w.timesteps[rows, j]
        )
        first = self.t[rows] == 0
        for is_first in (True, False):
            pick = first == is_first
            if pick.any():
                h = self._run_rows(x[torch.as_tensor(np.flatnonzero(pick))][:, int(is_first) :], rows[pick])
                out[pick] = step_embed.actions(h)
        return out

    def _act_full_window(self, rows: np.ndarray) -> np.ndarray:
        """Recompute each row's window (right-padded to K) and read the action at its last state token."""
        w = self.window
        inputs = (
            self.model.normalizer(self._tensor(w.states[rows])),
            self._tensor(w.actions[rows]),
            self._tensor(w.rtg[rows, :, None] * self.agent.config.reward_scale),
            self._tensor(w.timesteps[rows], torch.long),
        )
        L = TOKENS_PER_STEP * (self.K - 1) + STATE_TOKEN + 1  # full windows (t >= K) up to their last state token
        if self.window_decoder is not None:
            assert self.step_embed is not None  # a window decoder is built for flow attention only
            idx = torch.as_tensor(rows, device=self.device)
            self.window_decoder.reset(idx)
            return self.step_embed.actions(self.window_decoder.step(self.model.embed(*inputs)[:, :L], idx))
        pred = self.model(*inputs)  # (R, K, act) — predictions at every state token
        last = torch.as_tensor(w.length[rows] - 1, device=self.device)
        pred = pred[torch.arange(len(rows), device=self.device), last]
        return pred.to(torch.float64 if self.dtype == torch.float64 else torch.float32).cpu().numpy()


class _StepEmbedding:
    """``DecisionTransformer.embed_step`` and ``predict_action`` as a handful of tensor operators for the per-step
    calls of a rollout (inference only; the weights of the moment, re-read at a policy's every full reset).

    The three token embeddings are one product over the concatenated inputs [a_{t-1} | R̂_t | s_t] with a
    block-diagonal weight, the time embeddings of [t-1, t, t] one lookup; states are normalised and returns
    scaled in numpy first (folding the normaliser into the weights would cancel catastrophically in float32
    for state dimensions of tiny std). Tested against ``embed_step``/``predict_action``, and every policy test
    compares actions with the module's forward.
    """

    def __init__(self, model, dtype: torch.dtype):
        a, r, s = model.embed_action, model.embed_return, model.embed_state
        A, O, d = a.in_features, s.in_features, model.config.dim
        cast = lambda x: x.detach().to(dtype)  # noqa: E731
        w = torch.zeros(3, d, A + 1 + O, dtype=dtype, device=a.weight.device)
        w[0, :, :A], w[1, :, A : A + 1], w[2, :, A + 1 :] = cast(a.weight), cast(r.weight), cast(s.weight)
        self.weight, self.bias = w.reshape(3 * d, A + 1 + O), torch.cat([cast(a.bias), cast(r.bias), cast(s.bias)])
        table = model.embed_timestep  # None: no time input (a zero row, looked up for every step)
        self.time = cast(table.weight) if table is not None else torch.zeros(1, d, dtype=dtype, device=a.weight.device)
        norm = model.embed_norm
        self.norm = ((d,), cast(norm.weight), cast(norm.bias), norm.eps)
        self.head = (cast(model.predict_action[0].weight), cast(model.predict_action[0].bias))
        self.mean = model.normalizer.state_mean.detach().cpu().double().numpy()
        self.std = model.normalizer.state_std.detach().cpu().double().numpy()
        self.scale, self.top = model.config.reward_scale, self.time.shape[0] - 1
        self.device, self.np_dtype = a.weight.device, np.float64 if dtype == torch.float64 else np.float32
        self.d = d

    def tokens(self, prev_actions, rtg, states, t) -> torch.Tensor:
        x = np.concatenate(
            [prev_actions, np.asarray(rtg, np.float64)[:, None] * self.scale, (states - self.mean) / self.std], 1
        ).astype(self.np_dtype, copy=False)
        t = np.asarray(t)
        times = np.minimum(np.stack([np.maximum(t - 1, 0), t, t], 1), self.top)  # np.clip: 10x the overhead
        tok = torch.nn.functional.linear(torch.as_tensor(x, device=self.device), self.weight, self.bias)
        tok = tok.view(len(x), 3, self.d).add_(self.time[torch.as_tensor(times, device=self.device)])
        return torch.nn.functional.layer_norm(tok, *self.norm)

    def actions(self, h: torch.Tensor) -> np.ndarray:
        return torch.tanh(torch.nn.functional.linear(h, *self.head)).cpu().numpy()  # float32 or float64 (work dtype)


assert STATE_TOKEN == 1 and TOKENS_PER_STEP == 3  # the token order the recurrent path feeds
