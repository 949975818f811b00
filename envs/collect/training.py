"""Behaviour-policy training for ``flowrl collect``: SB3 SAC or TD3 on one torch thread, with a run lock and resume.

:func:`train_behavior` checkpoints every ``checkpoint_every`` environment steps with a deterministic evaluated
return, keeps the replay buffer in time order, and resumes from the last checkpoint after an interruption.
A run directory holds::

    run.json                       config + one entry per checkpoint; written last, so it is the commit point
    checkpoints/step_0010000.zip   the SB3 model at that step (``SAC.load``)
    replay_buffer.npz              every transition so far, in time order (run.json's ``buffer_pos`` rules)
    lock                           while a process trains here: its lock (flowrl.lock), holding its pid
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flowrl.envs.collect.recording import make_env, one_torch_thread, progress_bar

from flowrl import atomic, tiny
from flowrl.errors import InputError, MissingInputError
from flowrl.lock import folder_lock

__all__ = [
    "ALGORITHMS",
    "BehaviorTrainingConfig",
    "train_behavior",
    "load_run",
    "load_buffer",
    "load_model",
    "evaluate_model",
]

ALGORITHMS = ("sac", "td3")
RUN_FILE = "run.json"
BUFFER_FILE = "replay_buffer.npz"
# Identity keys added after the first runs were made; absent ones mean the defaults.
_OPTIONAL_IDENTITY = ("hidden", "batch_size", "learning_starts")
_BUFFER_KEYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


@dataclass
class BehaviorTrainingConfig:
    """How the behaviour policy is trained (saved in ``run.json``; a resumed run must match it)."""

    env: str
    """Env name or gymnasium id (resolved with :func:`flowrl.envs.specs.get_spec`)."""
    algo: str = "sac"
    """``sac`` (D4RL's choice) or ``td3``; SB3 default hyperparameters."""
    steps: int = 300_000
    """Environment steps to train for."""
    checkpoint_every: int = 10_000
    """Save a checkpoint (model + evaluated return + replay-buffer position) every this many steps."""
    eval_episodes: int = 5
    """Deterministic episodes that score each checkpoint."""
    seed: int = 0
    """Seed for SB3 (networks, exploration) and the training env; eval envs use ``seed + 10_000 + i``."""
    device: str = "cpu"
    """Torch device for SB3; small MLPs are fastest on one CPU thread."""
    hidden: tuple[int, ...] | None = None
    """Actor and critic hidden sizes; None = SB3's default for the algorithm (SAC 256-256, TD3 400-300)."""
    batch_size: int = 256
    """Minibatch size per gradient step (SB3's SAC default)."""
    learning_starts: int = 100
    """Uniform-random steps before learning starts (SB3's default)."""

    def __post_init__(self) -> None:
        self.algo = self.algo.lower()
        if self.algo not in ALGORITHMS:
            raise InputError(f"unknown algorithm {self.algo!r}; choose one of {', '.join(ALGORITHMS)}")
        self.hidden = None if self.hidden is None else tuple(int(h) for h in self.hidden)
        if self.steps <= 0 or self.checkpoint_every <= 0 or self.eval_episodes <= 0 or self.batch_size <= 0:
            raise InputError("steps, checkpoint_every, eval_episodes and batch_size must be positive")
        if (self.hidden is not None and (not self.hidden or min(self.hidden) <= 0)) or self.learning_starts < 0:
            raise InputError("hidden sizes must be positive and learning_starts non-negative")


def _make_model(cfg: BehaviorTrainingConfig, env, buffer_size: int):
    from stable_baselines3 import SAC, TD3

    kw: dict[str, Any] = {
        "buffer_size": buffer_size,
        "seed": cfg.seed,
        "device": cfg.device,
        "verbose": 0,
        "batch_size": cfg.batch_size,
        "learning_starts": cfg.learning_starts,
    }
    if cfg.hidden is not None:
        kw["policy_kwargs"] = {"net_arch": list(cfg.hidden)}
    if cfg.algo == "sac":
        return SAC("MlpPolicy", env, **kw)
    from stable_baselines3.common.noise import NormalActionNoise

    n = env.action_space.shape[0]
    return TD3("MlpPolicy", env, action_noise=NormalActionNoise(np.zeros(n), 0.1 * np.ones(n)), **kw)


def load_model(algo: str, path: Path, env=None, device: str = "cpu"):
    from stable_baselines3 import SAC, TD3

    return (SAC if algo == "sac" else TD3).load(str(path), env=env, device=device)


def evaluate_model(model, gym_id: str, max_episode_steps: int, episodes: int, seed: int) -> list[float]:
    """Deterministic returns of an SB3 model over ``episodes`` episodes (env seeds ``seed + i``)."""
    env = make_env(gym_id, max_episode_steps)
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                action, _ = model.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = env.step(action)
                total += float(r)
                done = term or trunc
            returns.append(total)
    finally:
        env.close()
    return returns


def _buffer_arrays(buffer, n: int) -> dict[str, Any]:  # Any: np.savez(**arrays) type-checks
    return {k: np.ascontiguousarray(getattr(buffer, k)[:n, 0]) for k in _BUFFER_KEYS}


def _restore_buffer(buffer, arrays: dict[str, np.ndarray], n: int) -> None:
    for k in _BUFFER_KEYS:
        getattr(buffer, k)[:n, 0] = arrays[k][:n]
    buffer.pos = n % buffer.buffer_size
    buffer.full = n >= buffer.buffer_size


def load_run(run_dir: str | os.PathLike) -> dict:
    """The committed state of a run directory (``run.json``); FileNotFoundError if there is none."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise MissingInputError(f"no behaviour-policy run at {run_dir} (missing {RUN_FILE})")
    return json.loads(path.read_text())


def load_buffer(run_dir: str | os.PathLike, n: int | None = None) -> dict[str, np.ndarray]:
    """The first ``n`` replay-buffer transitions of a run (default: all committed ones), in time order."""
    state = load_run(run_dir)
    n = state["buffer_pos"] if n is None else min(n, state["buffer_pos"])
    with np.load(Path(run_dir) / BUFFER_FILE) as z:
        return {k: z[k][:n].copy() for k in _BUFFER_KEYS}


def train_behavior(
    cfg: BehaviorTrainingConfig,
    run_dir: str | os.PathLike,
    *,
    progress: bool = True,
    on_checkpoint: Callable[[dict], None] | None = None,
    command: str | None = None,
) -> dict:
    """Train (or resume) a behaviour policy in ``run_dir``; returns the final ``run.json`` state.

    Idempotent: a finished run returns at once; an interrupted one continues from its last checkpoint (the
    episode cut by the interruption is flagged as a timeout in the buffer). ``on_checkpoint(entry)`` is called
    after each checkpoint is committed (tests use it to simulate a crash).
    """
    from flowrl.envs.specs import get_spec

    cfg = tiny.shrink(cfg)  # FLOWRL_TINY=1: a few SB3 steps (flowrl.tiny)
    spec = get_spec(cfg.env)
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    # Exclusive use: two trainers appending to one replay buffer would corrupt it.
    with folder_lock(run_dir, name="lock", hint="wait for it or use another --run-dir"), one_torch_thread():
        return _train(cfg, spec, run_dir, progress, on_checkpoint, command)


def _train(cfg: BehaviorTrainingConfig, spec, run_dir: Path, progress: bool, on_checkpoint, command) -> dict:
    identity = {
        "env": spec.name,
        "gym_id": spec.gym_id,
        "algo": cfg.algo,
        "seed": cfg.seed,
        "checkpoint_every": cfg.checkpoint_every,
        "eval_episodes": cfg.eval_episodes,
        "hidden": None if cfg.hidden is None else list(cfg.hidden),
        "batch_size": cfg.batch_size,
        "learning_starts": cfg.learning_starts,
    }
    env = make_env(spec.gym_id, spec.max_episode_steps)

    if (run_dir / RUN_FILE).is_file():
        state = load_run(run_dir)
        clash = {k: (state.get(k, v if k in _OPTIONAL_IDENTITY else None), v) for k, v in identity.items()}
        clash = {k: ab for k, ab in clash.items() if ab[0] != ab[1]}
        if clash:
            raise InputError(
                f"run directory {run_dir} was made with different settings: "
                + ", ".join(f"{k}={a!r} (asked {b!r})" for k, (a, b) in clash.items())
            )
        state["steps"] = max(state["steps"], cfg.steps)
        done = state["buffer_pos"]
        if done >= cfg.steps:
            env.close()
            return state
        last = state["checkpoints"][-1]
        model = load_model(cfg.algo, run_dir / last["model"], env=env, device=cfg.device)
        if model.replay_buffer.buffer_size < cfg.steps:
            model.replay_buffer = type(model.replay_buffer)(
                cfg.steps,
                model.observation_space,
                model.action_space,
                device=model.device,
                handle_timeout_termination=True,
            )
        with np.load(run_dir / BUFFER_FILE) as z:
            arrays = {k: z[k] for k in _BUFFER_KEYS}
        _restore_buffer(model.replay_buffer, arrays, done)
        # The env is reset on resume, so the episode in flight at the checkpoint ends here as a truncation.
        model.replay_buffer.dones[done - 1, 0] = 1.0
        model.replay_buffer.timeouts[done - 1, 0] = 1.0
        print(f"resuming {run_dir} at step {done} of {cfg.steps}", file=sys.stderr)
    else:
        state = {
            **identity,
            "steps": cfg.steps,
            "device": cfg.device,
            "command": command,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "buffer_pos": 0,
            "train_wall_s": 0.0,
            "checkpoints": [],
        }
        model = _make_model(cfg, env, buffer_size=cfg.steps)
        done = 0

    from stable_baselines3.common.callbacks import BaseCallback

    bar = progress_bar(
        total=cfg.steps, initial=done, desc=f"train {cfg.algo} {spec.name}", disable=not progress, unit="step"
    )

    class _Bar(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            return True

    callback = _Bar()
    try:
        while done < cfg.steps:
            chunk = min(cfg.checkpoint_every - done % cfg.checkpoint_every, cfg.steps - done)
            t0 = time.time()
            model.learn(chunk, reset_num_timesteps=False, callback=callback)
            done = int(model.num_timesteps)
            train_s = time.time() - t0
            t0 = time.time()
            rets = evaluate_model(model, spec.gym_id, spec.max_episode_steps, cfg.eval_episodes, cfg.seed + 10_000)
            eval_s = time.time() - t0
            name = f"checkpoints/step_{done:07d}.zip"
            with atomic.atomic_path(run_dir / name, suffix=".zip") as tmp:  # SB3 appends .zip to other names
                model.save(str(tmp))
            with atomic.atomic_path(run_dir / BUFFER_FILE, suffix=".npz") as tmp:
                np.savez(tmp, **_buffer_arrays(model.replay_buffer, done))
            entry = {
                "step": done,
                "eval_return_mean": float(np.mean(rets)),
                "eval_return_std": float(np.std(rets)),
                "eval_returns": [round(r, 3) for r in rets],
                "model": name,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "train_s": round(train_s, 1),
                "eval_s": round(eval_s, 1),
            }
            state["checkpoints"] = [c for c in state["checkpoints"] if c["step"] != done] + [entry]
            state["buffer_pos"] = done
            state["train_wall_s"] = round(state.get("train_wall_s", 0.0) + train_s + eval_s, 1)
            atomic.write_json(run_dir / RUN_FILE, state)
            bar.set_postfix(eval=f"{entry['eval_return_mean']:.0f}")
            bar.write(
                f"step {done}: eval return {entry['eval_return_mean']:.1f} ± {entry['eval_return_std']:.1f}"
                f" ({train_s:.0f}s train, {eval_s:.0f}s eval)"
            )
            if on_checkpoint is not None:
                on_checkpoint(entry)
    finally:
        bar.close()
        env.close()
    return state
