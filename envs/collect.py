"""Build D4RL-style datasets with Stable-Baselines3 behaviour policies (the library behind ``flowrl collect``).

1. :func:`train_behavior`: train SAC (or TD3) on one torch thread, checkpoint every ``checkpoint_every``
   environment steps with a deterministic evaluated return, keep the replay buffer in time order, and resume
   from the last checkpoint after an interruption. A run directory holds::

       run.json                       config + one entry per checkpoint; written last, so it is the commit point
       checkpoints/step_0010000.zip   the SB3 model at that step (``SAC.load``)
       replay_buffer.npz              every transition so far, in time order (run.json's ``buffer_pos`` rules)
       lock                           held by the process training in this directory

2. :func:`collect`: pick medium (:func:`select_medium`), record the levels (:func:`record`, batched over a
   gymnasium vector env; :func:`buffer_transitions` for medium-replay) and write each as a Minari dataset
   ``flowrl/<env>/<level>-v0`` (:func:`write_level`, atomic). :func:`collect_from_policy` records one level
   from an existing SB3 ``.zip`` or flowrl ``.pt``.

3. :func:`ensure_default_dataset`: the built-in ``hopper-medium`` dataset, generated from the policy shipped in
   ``policies/`` (exported with :func:`export_behavior_policy`) without SB3.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from flowrl.errors import InputError, MissingInputError, OutputExistsError

__all__ = [
    "ALGORITHMS",
    "LEVELS",
    "DEFAULT_TRANSITIONS",
    "TrainConfig",
    "CollectConfig",
    "train_behavior",
    "load_run",
    "load_buffer",
    "record",
    "measure_returns",
    "buffer_transitions",
    "select_medium",
    "select_expert",
    "dataset_id",
    "collect",
    "collect_from_policy",
    "ensure_default_dataset",
    "export_behavior_policy",
]

ALGORITHMS = ("sac", "td3")
RUN_FILE = "run.json"
BUFFER_FILE = "replay_buffer.npz"
# Identity keys added after the first runs were made; absent ones mean the defaults.
_OPTIONAL_IDENTITY = ("hidden", "batch_size", "learning_starts")
_BUFFER_KEYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


# ----------------------------------------------------------------------------------------------- atomic files
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def _atomic_save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def one_torch_thread():
    """Run the block with one torch thread (small MLPs: more threads only add contention), then restore."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


# ----------------------------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
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


def _make_env(gym_id: str, max_episode_steps: int, *, seed: int | None = None):
    import gymnasium as gym

    try:
        env = gym.make(gym_id, max_episode_steps=max_episode_steps)
    except gym.error.Error as e:  # unregistered id, missing dependency, ...
        raise InputError(f"cannot make environment {gym_id!r}: {e}") from None
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def _make_model(cfg: TrainConfig, env, buffer_size: int):
    from stable_baselines3 import SAC, TD3

    kw = {
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


def _load_model(algo: str, path: Path, env=None, device: str = "cpu"):
    from stable_baselines3 import SAC, TD3

    return (SAC if algo == "sac" else TD3).load(str(path), env=env, device=device)


def evaluate_model(model, gym_id: str, max_episode_steps: int, episodes: int, seed: int) -> list[float]:
    """Deterministic returns of an SB3 model over ``episodes`` episodes (env seeds ``seed + i``)."""
    env = _make_env(gym_id, max_episode_steps)
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


def _buffer_arrays(buffer, n: int) -> dict[str, np.ndarray]:
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
    cfg: TrainConfig,
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

    spec = get_spec(cfg.env)
    run_dir = Path(run_dir)
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    with _run_lock(run_dir), one_torch_thread():
        return _train(cfg, spec, run_dir, progress, on_checkpoint, command)


@contextlib.contextmanager
def _run_lock(run_dir: Path):
    """Exclusive use of a run directory: two trainers appending to one replay buffer would corrupt it."""
    import fcntl

    with open(run_dir / "lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise InputError(
                f"run directory {run_dir} is in use by another process "
                f"(pid {f.read().strip() or 'unknown'}); wait for it or use another --run-dir"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _train(cfg: TrainConfig, spec, run_dir: Path, progress: bool, on_checkpoint, command) -> dict:
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
    env = _make_env(spec.gym_id, spec.max_episode_steps)

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
        model = _load_model(cfg.algo, run_dir / last["model"], env=env, device=cfg.device)
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

    bar = _tqdm(total=cfg.steps, initial=done, desc=f"train {cfg.algo} {spec.name}", disable=not progress, unit="step")

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
            tmp = run_dir / f"checkpoints/.tmp_step_{done:07d}"
            model.save(str(tmp))  # SB3 appends .zip
            os.replace(f"{tmp}.zip", run_dir / name)
            _atomic_save_npz(run_dir / BUFFER_FILE, _buffer_arrays(model.replay_buffer, done))
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
            _atomic_write_json(run_dir / RUN_FILE, state)
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


def _tqdm(**kwargs):
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


# ----------------------------------------------------------------------------------------------- recording
def dataset_id(env: str, level: str) -> str:
    """Minari id of a flowrl-collected dataset: ``flowrl/<env>/<level>-v0`` (``flowrl/hopper/medium-v0``)."""
    from flowrl.envs.specs import get_spec

    name = re.sub(r"-v\d+$", "", get_spec(env).name).lower()
    return f"flowrl/{name}/{level}-v0"


def _flat_dims(spec) -> tuple[int, int, np.ndarray, np.ndarray]:
    env = _make_env(spec.gym_id, spec.max_episode_steps)
    try:
        from gymnasium.spaces import Box

        if not isinstance(env.observation_space, Box) or not isinstance(env.action_space, Box):
            raise InputError(f"{spec.gym_id}: only continuous (Box) observation and action spaces are supported")
        obs_dim = int(np.prod(env.observation_space.shape))
        act_dim = int(np.prod(env.action_space.shape))
        return obs_dim, act_dim, np.asarray(env.action_space.low), np.asarray(env.action_space.high)
    finally:
        env.close()


def record(
    spec,
    transitions: int,
    policy=None,
    *,
    deterministic: bool = False,
    seed: int = 0,
    num_envs: int = 16,
    progress: bool = True,
    desc: str = "record",
) -> dict[str, Any]:
    """Roll out ``policy`` (None: uniform random actions) for exactly ``transitions`` steps.

    ``num_envs`` copies of the env step in lockstep (a gymnasium vector env; the policy sees one batch per
    step). Each copy contributes ``transitions / num_envs`` steps; its episode in flight when its share is used
    up is cut and flagged as a timeout (D4RL does the same at the end of a file). Copy ``i`` is reset with seed
    ``seed + i``; actions are drawn from generators seeded with ``seed``, so a call is reproducible.

    Returns flat float32 arrays ``observations`` [N, obs], ``next_observations`` [N, obs], ``actions``
    [N, act], ``rewards`` [N] and bool ``terminals``, ``timeouts`` [N] (episodes in env-copy order), plus
    ``episode_returns`` (episodes that ended by termination or time limit) and ``cut_returns`` (cut ones).
    """
    with one_torch_thread():
        return _record(
            spec,
            transitions,
            policy,
            deterministic=deterministic,
            seed=seed,
            num_envs=num_envs,
            progress=progress,
            desc=desc,
        )


def _record(spec, transitions, policy, *, deterministic, seed, num_envs, progress, desc) -> dict[str, Any]:
    import gymnasium as gym
    import torch

    if transitions <= 0:
        raise InputError(f"transitions must be positive, got {transitions}")
    num_envs = max(1, min(num_envs, transitions))
    budget = [transitions // num_envs + (i < transitions % num_envs) for i in range(num_envs)]
    venv = gym.vector.SyncVectorEnv(
        [lambda: _make_env(spec.gym_id, spec.max_episode_steps) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    low, high = venv.single_action_space.low, venv.single_action_space.high
    if policy is None and not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise InputError(f"{spec.gym_id} has an unbounded action space; uniform random actions are undefined")
    keys = ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")
    per_env: list[dict[str, list]] = [{k: [] for k in keys} for _ in range(num_envs)]
    count = [0] * num_envs
    running = np.zeros(num_envs)
    ep_returns: list[float] = []
    cut_returns: list[float] = []
    bar = _tqdm(total=transitions, desc=desc, disable=not progress, unit="step", mininterval=0.5)
    try:
        obs, _ = venv.reset(seed=seed)
        while min(c - b for c, b in zip(count, budget)) < 0:
            if policy is None:
                act = rng.uniform(low, high, size=(num_envs, len(low))).astype(np.float32)
            else:
                act = policy.act(obs, deterministic=deterministic, generator=gen)
            nxt, rew, term, trunc, info = venv.step(act)
            final = nxt.copy()
            if "_final_obs" in info:
                for i in np.flatnonzero(info["_final_obs"]):
                    final[i] = info["final_obs"][i]
            running += rew
            for i in range(num_envs):
                if count[i] >= budget[i]:
                    continue
                count[i] += 1
                d = per_env[i]
                cut = count[i] == budget[i] and not (term[i] or trunc[i])
                d["observations"].append(obs[i])
                d["next_observations"].append(final[i])
                d["actions"].append(act[i])
                d["rewards"].append(rew[i])
                d["terminals"].append(bool(term[i]))
                d["timeouts"].append(bool(trunc[i] and not term[i]) or cut)
                if term[i] or trunc[i]:
                    ep_returns.append(float(running[i]))
                elif cut:
                    cut_returns.append(float(running[i]))
            running[term | trunc] = 0.0
            obs = nxt
            bar.update(int(sum(min(c, b) for c, b in zip(count, budget))) - bar.n)
    finally:
        bar.close()
        venv.close()
    out: dict[str, Any] = {
        "observations": np.asarray([o for d in per_env for o in d["observations"]], dtype=np.float32),
        "next_observations": np.asarray([o for d in per_env for o in d["next_observations"]], dtype=np.float32),
        "actions": np.asarray([a for d in per_env for a in d["actions"]], dtype=np.float32),
        "rewards": np.asarray([r for d in per_env for r in d["rewards"]], dtype=np.float32),
        "terminals": np.asarray([t for d in per_env for t in d["terminals"]], dtype=bool),
        "timeouts": np.asarray([t for d in per_env for t in d["timeouts"]], dtype=bool),
    }
    out["episode_returns"] = np.asarray(ep_returns, dtype=np.float64)
    out["cut_returns"] = np.asarray(cut_returns, dtype=np.float64)
    return out


def measure_returns(
    spec,
    policy=None,
    episodes: int = 100,
    *,
    deterministic: bool = False,
    seed: int = 0,
    num_envs: int = 16,
    progress: bool = True,
    desc: str = "measure",
) -> np.ndarray:
    """Returns of ``episodes`` whole episodes of ``policy`` (None: uniform random), batched over env copies."""
    with one_torch_thread():
        return _measure(
            spec,
            policy,
            episodes,
            deterministic=deterministic,
            seed=seed,
            num_envs=num_envs,
            progress=progress,
            desc=desc,
        )


def _measure(spec, policy, episodes, *, deterministic, seed, num_envs, progress, desc) -> np.ndarray:
    import gymnasium as gym
    import torch

    num_envs = max(1, min(num_envs, episodes))
    venv = gym.vector.SyncVectorEnv(
        [lambda: _make_env(spec.gym_id, spec.max_episode_steps) for _ in range(num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    low, high = venv.single_action_space.low, venv.single_action_space.high
    # Copy i plays episodes i, i + num_envs, ...: a fixed assignment, so the result does not depend on timing.
    quota = [len(range(i, episodes, num_envs)) for i in range(num_envs)]
    returns: list[list[float]] = [[] for _ in range(num_envs)]
    running = np.zeros(num_envs)
    bar = _tqdm(total=episodes, desc=desc, disable=not progress, unit="ep")
    try:
        obs, _ = venv.reset(seed=seed)
        while any(len(r) < q for r, q in zip(returns, quota)):
            if policy is None:
                act = rng.uniform(low, high, size=(num_envs, len(low))).astype(np.float32)
            else:
                act = policy.act(obs, deterministic=deterministic, generator=gen)
            obs, rew, term, trunc, _ = venv.step(act)
            running += rew
            for i in np.flatnonzero(term | trunc):
                if len(returns[i]) < quota[i]:
                    returns[i].append(float(running[i]))
                    bar.update(1)
                running[i] = 0.0
    finally:
        bar.close()
        venv.close()
    return np.asarray([r for rs in returns for r in rs], dtype=np.float64)


def buffer_transitions(run_dir: str | os.PathLike, n: int, action_low, action_high) -> dict[str, Any]:
    """The first ``n`` replay-buffer transitions of a run as flat D4RL arrays (actions in env units).

    SB3 stores actions squashed to [-1, 1]; they are mapped back to ``[action_low, action_high]``. The last
    transition is flagged as a timeout when its episode was still running at step ``n``.
    """
    b = load_buffer(run_dir, n)
    low = np.asarray(action_low, dtype=np.float64)
    high = np.asarray(action_high, dtype=np.float64)
    actions = (low + 0.5 * (b["actions"].astype(np.float64) + 1.0) * (high - low)).astype(np.float32)
    dones = b["dones"] > 0.5
    timeouts = (b["timeouts"] > 0.5) & dones
    terminals = dones & ~timeouts
    timeouts[-1] |= not dones[-1]
    ends = np.flatnonzero(terminals | timeouts)
    rew = b["rewards"].astype(np.float64)
    csum = np.concatenate([[0.0], np.cumsum(rew)])
    starts = np.concatenate([[0], ends[:-1] + 1])
    returns = csum[ends + 1] - csum[starts]
    return {
        "observations": b["observations"].astype(np.float32),
        "next_observations": b["next_observations"].astype(np.float32),
        "actions": actions,
        "rewards": b["rewards"].astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "episode_returns": returns,
        "cut_returns": np.zeros(0),
    }


def concat_levels(*parts: dict[str, Any]) -> dict[str, Any]:
    """Concatenate recorded levels (medium-expert = medium + expert); every part ends with a flagged step."""
    keys = (
        "observations",
        "next_observations",
        "actions",
        "rewards",
        "terminals",
        "timeouts",
        "episode_returns",
        "cut_returns",
    )
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


EXPERT_RULES = ("best", "final")
MEDIUM_RULES = ("closest", "first")


def select_expert(checkpoints: list[dict], rule: str = "best") -> dict:
    """The expert checkpoint: the best evaluated one (``best``, earliest on ties) or the last (``final``).

    ``best`` is the default because SAC's evaluated return swings by thousands between checkpoints (the
    Hopper run in the README scored 3236 at 210k steps and 980 at the end, 260k).
    """
    if not checkpoints:
        raise InputError("the run has no checkpoints to choose a policy from")
    if rule not in EXPERT_RULES:
        raise InputError(f"unknown expert rule {rule!r}; choose one of {', '.join(EXPERT_RULES)}")
    if rule == "final":
        return checkpoints[-1]
    return max(checkpoints, key=lambda c: c["eval_return_mean"])  # max keeps the first of equal ones


def select_medium(
    checkpoints: list[dict], fraction: float = 1 / 3, *, expert: dict | None = None, rule: str = "closest"
) -> dict:
    """The medium checkpoint: at ``fraction`` of the expert's evaluated return, among checkpoints up to it.

    ``first``: the first checkpoint whose return reaches the target (D4RL's "early-stopped at a third of
    expert"); ``closest``: the checkpoint whose return is nearest the target (earliest on ties), which a lucky
    early evaluation cannot push to near-expert level. ``expert`` defaults to :func:`select_expert` ``best``.
    Returns are shifted by the lowest evaluated return first (when negative), so the rule also works for envs
    with negative returns.
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"medium fraction must be in (0, 1], got {fraction}")
    if rule not in MEDIUM_RULES:
        raise InputError(f"unknown medium rule {rule!r}; choose one of {', '.join(MEDIUM_RULES)}")
    expert = select_expert(checkpoints) if expert is None else expert
    cands = [c for c in checkpoints if c["step"] <= expert["step"]]
    rets = np.asarray([c["eval_return_mean"] for c in cands], dtype=np.float64)
    base = min(0.0, float(rets.min()))
    target = base + fraction * (expert["eval_return_mean"] - base)
    if rule == "closest":
        return cands[int(np.argmin(np.abs(rets - target)))]
    return next((c for c, r in zip(cands, rets) if r >= target), expert)


def summarize(arrays: dict[str, Any]) -> dict[str, Any]:
    """Counts and return statistics of recorded arrays (complete episodes when there are any)."""
    rets = arrays["episode_returns"]
    use = rets if len(rets) else arrays["cut_returns"]
    return {
        "transitions": int(len(arrays["rewards"])),
        "episodes": int(np.count_nonzero(arrays["terminals"] | arrays["timeouts"])),
        "complete_episodes": int(len(rets)),
        "mean_return": float(np.mean(use)) if len(use) else None,
        "std_return": float(np.std(use)) if len(use) else None,
        "min_return": float(np.min(use)) if len(use) else None,
        "max_return": float(np.max(use)) if len(use) else None,
    }


def write_level(
    dataset: str, arrays: dict[str, Any], spec, metadata: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Write recorded arrays as the Minari dataset ``dataset`` (atomic; refuses an existing id)."""
    from flowrl.envs.minari_io import write_minari_dataset

    try:
        return write_minari_dataset(
            dataset,
            arrays["observations"],
            arrays["actions"],
            arrays["rewards"],
            arrays["terminals"],
            arrays["timeouts"],
            env_id=spec.gym_id,
            metadata=metadata,
            next_observations=arrays["next_observations"],
            overwrite=overwrite,
        )
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"no space left on device while writing {dataset!r}") from None
        raise


def estimate_bytes(transitions: int, obs_dim: int, act_dim: int) -> int:
    """Rough on-disk size of a written dataset, staging copy included (float32 arrays + flags, ×2)."""
    return int(2 * transitions * (4 * (obs_dim + act_dim + 1) + 2)) + (1 << 20)


def check_free_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """OSError(ENOSPC) with one clear line when the filesystem holding ``path`` has less than ``needed``."""
    p = Path(path).expanduser().resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    free = shutil.disk_usage(p).free
    if free < needed:
        raise OSError(
            errno.ENOSPC,
            f"not enough disk space for {what}: need about {needed / 2**20:.0f} MiB "
            f"at {p}, {free / 2**20:.0f} MiB free",
        )


def _version() -> str:
    try:
        from flowrl import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


# ----------------------------------------------------------------------------------------------- orchestration
LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
POLICY_LEVELS = ("medium", "expert")
DEFAULT_TRANSITIONS = 100_000
DEFAULT_DATASETS = {"hopper-medium": ("hopper", "medium", "hopper_medium_sac")}


def parse_levels(levels) -> tuple[str, ...]:
    """``"random,medium"`` or a sequence -> validated tuple in canonical order; ``all`` means every level,
    ``none`` no level (train, and export a policy, only)."""
    items = [x.strip() for x in (levels.split(",") if isinstance(levels, str) else levels) if x.strip()]
    if items == ["all"]:
        return LEVELS
    if items == ["none"] or (not items and not isinstance(levels, str)):
        return ()
    bad = [x for x in items if x not in LEVELS]
    if bad or not items:
        raise InputError(f"unknown level {', '.join(map(repr, bad)) or '(none)'}; choose from {', '.join(LEVELS)}")
    return tuple(x for x in LEVELS if x in items)


@dataclass
class CollectConfig(TrainConfig):
    """``flowrl collect ENV``: train a behaviour policy, then record D4RL-style levels as Minari datasets."""

    levels: tuple[str, ...] = LEVELS
    """Levels to write: random, medium, medium-replay, expert, medium-expert (empty: train only)."""
    transitions: int = DEFAULT_TRANSITIONS
    """Transitions per recorded level (random, medium, expert); D4RL used 1M, 100k keeps a run in minutes."""
    medium_fraction: float = 1 / 3
    """Medium policy = the checkpoint at this fraction of the expert's evaluated return (see ``medium_rule``)."""
    medium_rule: str = "closest"
    """``closest``: evaluated return nearest the target; ``first``: first checkpoint reaching it."""
    expert_rule: str = "best"
    """Expert policy: ``best`` evaluated checkpoint, or ``final`` (the last one)."""
    ref_episodes: int = 100
    """Episodes for measured reference scores (envs without D4RL constants)."""
    num_envs: int = 16
    """Env copies stepped together while recording."""
    run_dir: str | None = None
    """Training run directory (default ``~/.cache/flowrl/collect/<env>-<algo>-seed<seed>``)."""
    overwrite: bool = False
    """Replace existing datasets with the same ids."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.levels = parse_levels(self.levels)
        if self.transitions <= 0 or self.ref_episodes <= 0 or self.num_envs <= 0:
            raise InputError("transitions, ref_episodes and num_envs must be positive")
        if not 0.0 < self.medium_fraction <= 1.0:
            raise InputError(f"medium fraction must be in (0, 1], got {self.medium_fraction}")
        if self.medium_rule not in MEDIUM_RULES or self.expert_rule not in EXPERT_RULES:
            raise InputError(f"medium rule must be one of {MEDIUM_RULES} and expert rule one of {EXPERT_RULES}")


def default_run_dir(env: str, algo: str, seed: int) -> Path:
    base = Path(os.environ.get("FLOWRL_CACHE") or Path.home() / ".cache" / "flowrl")
    return base / "collect" / f"{env}-{algo}-seed{seed}"


def _reference_scores(spec, cfg: CollectConfig, expert_policy, progress: bool) -> dict[str, Any]:
    if spec.has_reference:
        return {"ref_min_score": spec.ref_min_score, "ref_max_score": spec.ref_max_score, "ref_source": "D4RL"}
    lo = measure_returns(
        spec,
        None,
        cfg.ref_episodes,
        seed=cfg.seed + 20_000,
        num_envs=cfg.num_envs,
        progress=progress,
        desc="ref: random",
    )
    out: dict[str, Any] = {"ref_min_score": float(lo.mean()), "ref_source": f"measured over {len(lo)} episodes"}
    if expert_policy is not None:
        hi = measure_returns(
            spec,
            expert_policy,
            cfg.ref_episodes,
            seed=cfg.seed + 30_000,
            num_envs=cfg.num_envs,
            progress=progress,
            desc="ref: expert",
        )
        out["ref_max_score"] = float(hi.mean())
    return out


def collect(
    cfg: CollectConfig,
    *,
    progress: bool = True,
    on_checkpoint: Callable[[dict], None] | None = None,
    command: str | None = None,
    export_behavior: str | os.PathLike | None = None,
    export_seeds: tuple[int, ...] = (0, 1, 2),
    export_transitions: int = DEFAULT_TRANSITIONS,
) -> dict[str, dict[str, Any]]:
    """Train (or resume) the behaviour policy and write the requested levels; returns ``{level: info}``.

    Every target id is checked before any work (existing ones refused unless ``overwrite``), and so is the
    free disk space. Each dataset is written atomically. With ``export_behavior`` the medium policy's actor is
    also exported there as a compact policy (see :func:`export_behavior_policy`).
    """
    from flowrl.envs.behavior import from_sb3
    from flowrl.envs.minari_io import minari_root
    from flowrl.envs.specs import get_spec

    spec = get_spec(cfg.env)
    obs_dim, act_dim, low, high = _flat_dims(spec)
    ids = {lv: dataset_id(cfg.env, lv) for lv in cfg.levels}
    root = minari_root()
    if not cfg.overwrite:
        taken = [i for i in ids.values() if (root / i).exists()]
        if taken:
            raise OutputExistsError(f"dataset {taken[0]!r} already exists in {root} (pass --overwrite to replace it)")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(spec.name, cfg.algo, cfg.seed)
    n_ckpt = -(-cfg.steps // cfg.checkpoint_every)
    sizes = {
        "random": cfg.transitions,
        "medium": cfg.transitions,
        "expert": cfg.transitions,
        "medium-replay": cfg.steps,
        "medium-expert": 2 * cfg.transitions,
    }
    check_free_space(root, sum(estimate_bytes(sizes[lv], obs_dim, act_dim) for lv in cfg.levels), "the datasets")
    needs_policy = any(lv != "random" for lv in cfg.levels) or not spec.has_reference or export_behavior is not None
    if export_behavior is not None and Path(export_behavior).with_suffix(".pt").exists() and not cfg.overwrite:
        raise OutputExistsError(
            f"{Path(export_behavior).with_suffix('.pt')} already exists (pass --overwrite to replace it)"
        )
    if needs_policy and not (run_dir / RUN_FILE).is_file():
        ckpt_bytes = 40 * (obs_dim + act_dim + 256) * 256 + (1 << 20)  # SB3 zip: actor, critics, optimizers
        check_free_space(
            run_dir, n_ckpt * ckpt_bytes + estimate_bytes(cfg.steps, 2 * obs_dim, act_dim), "the training run"
        )

    state, medium_ck, final_ck, policies = None, None, None, {}
    if needs_policy:
        train_cfg = TrainConfig(**{f.name: getattr(cfg, f.name) for f in fields(TrainConfig)})
        state = train_behavior(train_cfg, run_dir, progress=progress, on_checkpoint=on_checkpoint, command=command)
        ckpts = [c for c in state["checkpoints"] if c["step"] <= cfg.steps]
        final_ck = select_expert(ckpts, cfg.expert_rule)
        medium_ck = select_medium(ckpts, cfg.medium_fraction, expert=final_ck, rule=cfg.medium_rule)
        for name, ck in (("medium", medium_ck), ("expert", final_ck)):
            policies[name] = from_sb3(_load_model(cfg.algo, run_dir / ck["model"]))
        if export_behavior is not None:
            info = {
                "algorithm": f"SB3 {cfg.algo.upper()}",
                "command": command or state.get("command"),
                "training_command": state.get("command"),
                "run_dir": str(run_dir),
                "seed": cfg.seed,
                "training_steps": ckpts[-1]["step"],
                "medium_fraction": cfg.medium_fraction,
                "medium_rule": cfg.medium_rule,
                "expert_rule": cfg.expert_rule,
                "expert_step": final_ck["step"],
                "policy_step": medium_ck["step"],
                "eval_return": medium_ck["eval_return_mean"],
                "eval_returns": medium_ck["eval_returns"],
                "expert_eval_return": final_ck["eval_return_mean"],
                "eval_episodes": cfg.eval_episodes,
                "training_wall_s": state.get("train_wall_s"),
                "checkpoint_returns": {c["step"]: round(c["eval_return_mean"], 1) for c in ckpts},
            }
            export_behavior_policy(
                run_dir / medium_ck["model"],
                export_behavior,
                cfg.env,
                info=info,
                seeds=export_seeds,
                transitions=export_transitions,
                num_envs=cfg.num_envs,
                progress=progress,
            )
            if progress:
                print(
                    f"exported the medium policy (step {medium_ck['step']}, eval return "
                    f"{medium_ck['eval_return_mean']:.1f}) to {export_behavior}",
                    file=sys.stderr,
                )
    if not cfg.levels:
        return {}
    refs = _reference_scores(spec, cfg, policies.get("expert"), progress)

    common = {
        "env_name": spec.name,
        "gym_id": spec.gym_id,
        "seed": cfg.seed,
        "flowrl_version": _version(),
        "command": command,
        **refs,
    }
    if state is not None:
        common.update(
            training_algorithm=f"SB3 {cfg.algo.upper()}",
            training_steps=ckpts[-1]["step"],
            run_dir=str(run_dir),
            medium_fraction=cfg.medium_fraction,
            medium_rule=cfg.medium_rule,
            expert_rule=cfg.expert_rule,
        )
    recorded: dict[str, dict[str, Any]] = {}

    def get(level: str) -> dict[str, Any]:
        if level not in recorded:
            if level == "random":
                arr = record(
                    spec,
                    cfg.transitions,
                    None,
                    seed=cfg.seed,
                    num_envs=cfg.num_envs,
                    progress=progress,
                    desc="record random",
                )
                meta = {"algorithm_name": "uniform random actions", "policy": "uniform random"}
            elif level in POLICY_LEVELS:
                ck = medium_ck if level == "medium" else final_ck
                arr = record(
                    spec,
                    cfg.transitions,
                    policies[level],
                    seed=cfg.seed + 1 + LEVELS.index(level),
                    num_envs=cfg.num_envs,
                    progress=progress,
                    desc=f"record {level}",
                )
                meta = {
                    "algorithm_name": f"SB3 {cfg.algo.upper()} (stochastic actions)",
                    "policy": f"{run_dir / ck['model']}",
                    "policy_step": ck["step"],
                    "eval_return": ck["eval_return_mean"],
                }
            elif level == "medium-replay":
                arr = buffer_transitions(run_dir, medium_ck["step"], low, high)
                meta = {
                    "algorithm_name": f"SB3 {cfg.algo.upper()} replay buffer",
                    "policy": "replay buffer up to the medium checkpoint",
                    "policy_step": medium_ck["step"],
                    "eval_return": medium_ck["eval_return_mean"],
                }
            else:
                arr = concat_levels(get("medium")[0], get("expert")[0])
                meta = {
                    "algorithm_name": f"SB3 {cfg.algo.upper()} medium + expert",
                    "policy": "medium and expert checkpoints",
                    "policy_step": [medium_ck["step"], final_ck["step"]],
                    "eval_return": [medium_ck["eval_return_mean"], final_ck["eval_return_mean"]],
                }
            recorded[level] = (arr, meta)
        return recorded[level]

    out: dict[str, dict[str, Any]] = {}
    for level in cfg.levels:
        arr, meta = get(level)
        stats = summarize(arr)
        meta = {**common, **meta, "level": level, **stats}
        path = write_level(ids[level], arr, spec, meta, overwrite=cfg.overwrite)
        out[level] = {
            "dataset_id": ids[level],
            "path": str(path),
            **stats,
            **{k: meta[k] for k in ("policy_step", "eval_return") if k in meta},
        }
        if progress:
            print(
                f"wrote {ids[level]}: {stats['transitions']} transitions, {stats['episodes']} episodes, "
                f"mean return {stats['mean_return']:.1f}",
                file=sys.stderr,
            )
    return out


def collect_from_policy(
    env: str,
    policy_path: str | os.PathLike,
    level: str,
    transitions: int = DEFAULT_TRANSITIONS,
    *,
    seed: int = 0,
    deterministic: bool = False,
    num_envs: int = 16,
    overwrite: bool = False,
    dataset: str | None = None,
    ref_episodes: int = 100,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Record ``transitions`` steps of an existing policy (SB3 SAC/TD3 ``.zip`` or flowrl ``.pt``) as a level."""
    from flowrl.envs.behavior import load_behavior
    from flowrl.envs.minari_io import minari_root
    from flowrl.envs.specs import get_spec

    spec = get_spec(env)
    if level not in POLICY_LEVELS:
        if level in LEVELS:
            raise InputError(
                f"level {level!r} cannot be recorded from one policy; --from-policy records "
                f"{' or '.join(POLICY_LEVELS)}"
            )
        raise InputError(f"unknown level {level!r}; --from-policy records {' or '.join(POLICY_LEVELS)}")
    if transitions <= 0:
        raise InputError(f"transitions must be positive, got {transitions}")
    ds_id = dataset or dataset_id(env, level)
    root = minari_root()
    if (root / ds_id).exists() and not overwrite:
        raise OutputExistsError(f"dataset {ds_id!r} already exists in {root} (pass --overwrite to replace it)")
    obs_dim, act_dim, _, _ = _flat_dims(spec)
    policy = load_behavior(policy_path)
    if (policy.obs_dim, policy.act_dim) != (obs_dim, act_dim):
        raise InputError(
            f"policy {policy_path} is for observations of size {policy.obs_dim} and actions of size "
            f"{policy.act_dim}; {spec.gym_id} has {obs_dim} and {act_dim}"
        )
    check_free_space(root, estimate_bytes(transitions, obs_dim, act_dim), f"dataset {ds_id!r}")
    arr = record(
        spec,
        transitions,
        policy,
        deterministic=deterministic,
        seed=seed,
        num_envs=num_envs,
        progress=progress,
        desc=f"record {level}",
    )
    if spec.has_reference:
        refs = {"ref_min_score": spec.ref_min_score, "ref_max_score": spec.ref_max_score, "ref_source": "D4RL"}
    else:
        lo = measure_returns(
            spec, None, ref_episodes, seed=seed + 20_000, num_envs=num_envs, progress=progress, desc="ref: random"
        )
        refs = {"ref_min_score": float(lo.mean()), "ref_source": f"measured over {len(lo)} episodes"}
    info = getattr(policy, "info", {})
    meta = {
        "env_name": spec.name,
        "gym_id": spec.gym_id,
        "level": level,
        "seed": seed,
        "command": command,
        "flowrl_version": _version(),
        "policy": str(Path(policy_path).resolve()),
        "algorithm_name": f"{policy.kind.upper()} policy ({'deterministic' if deterministic else 'stochastic'})",
        **{k: info[k] for k in ("policy_step", "eval_return", "training_steps") if k in info},
        **refs,
        **summarize(arr),
    }
    path = write_level(ds_id, arr, spec, meta, overwrite=overwrite)
    return {"dataset_id": ds_id, "path": str(path), **summarize(arr)}


def ensure_default_dataset(
    name: str = "hopper-medium",
    *,
    progress: bool = True,
    transitions: int = DEFAULT_TRANSITIONS,
    seed: int = 0,
    num_envs: int = 16,
) -> str:
    """The Minari id of a built-in default dataset, generating it from the shipped policy when absent.

    ``hopper-medium`` -> ``flowrl/hopper/medium-v0``: ``transitions`` steps of the shipped Hopper SAC policy
    (stochastic actions), batched over ``num_envs`` env copies; about a minute on one core, no SB3 needed.
    """
    from flowrl.envs.behavior import load_behavior, shipped_policy_path
    from flowrl.envs.minari_io import minari_root, resolve_minari_id
    from flowrl.envs.specs import get_spec

    key = name[len("flowrl/") :].replace("/", "-").removesuffix("-v0") if name.startswith("flowrl/") else name
    if key not in DEFAULT_DATASETS:
        raise InputError(f"no built-in default dataset {name!r}; built-in: {', '.join(DEFAULT_DATASETS)}")
    env, level, policy_name = DEFAULT_DATASETS[key]
    ds_id = dataset_id(env, level)
    if resolve_minari_id(ds_id) is not None:
        return ds_id
    path = shipped_policy_path(policy_name)
    if not path.is_file():
        raise FileNotFoundError(f"the shipped behaviour policy {path} is missing from this installation")
    spec = get_spec(env)
    policy = load_behavior(path)
    check_free_space(minari_root(), estimate_bytes(transitions, policy.obs_dim, policy.act_dim), f"dataset {ds_id!r}")
    t0 = time.time()
    arr = record(spec, transitions, policy, seed=seed, num_envs=num_envs, progress=progress, desc=f"generate {ds_id}")
    info = getattr(policy, "info", {})
    meta = {
        "env_name": spec.name,
        "gym_id": spec.gym_id,
        "level": level,
        "seed": seed,
        "flowrl_version": _version(),
        "policy": f"flowrl.envs/policies/{path.name} (shipped)",
        "algorithm_name": "SB3 SAC actor (shipped, stochastic actions)",
        **{k: info[k] for k in ("policy_step", "eval_return", "training_steps", "command") if k in info},
        "ref_min_score": spec.ref_min_score,
        "ref_max_score": spec.ref_max_score,
        "ref_source": "D4RL",
        "generation_wall_s": round(time.time() - t0, 1),
        **summarize(arr),
    }
    try:
        write_level(ds_id, arr, spec, meta)
    except FileExistsError:  # another process generated it meanwhile
        pass
    return ds_id


def export_behavior_policy(
    source,
    out: str | os.PathLike,
    env: str = "hopper",
    *,
    info: dict[str, Any] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    transitions: int = DEFAULT_TRANSITIONS,
    num_envs: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Export an SB3 SAC/TD3 model (or ``.zip``) to a compact policy and record what it generates.

    For each seed a default-size dataset is recorded exactly as :func:`ensure_default_dataset` does (not
    written); the sidecar JSON gets ``info`` plus ``mean_return_range`` (the lowest and highest dataset mean
    return over ``seeds``, widened by two standard errors), ``episode_return_range`` (lowest and highest
    complete-episode return), the per-seed means and generation wall times.
    """
    from flowrl.envs.behavior import from_sb3, save_behavior
    from flowrl.envs.specs import get_spec

    spec = get_spec(env)
    policy = from_sb3(source)
    obs_dim, act_dim, _, _ = _flat_dims(spec)
    if (policy.obs_dim, policy.act_dim) != (obs_dim, act_dim):
        raise InputError(
            f"policy is for sizes {policy.obs_dim}/{policy.act_dim}; {spec.gym_id} has {obs_dim}/{act_dim}"
        )
    means, lows, highs, walls, all_returns = [], [], [], [], []
    for seed in seeds:
        t0 = time.time()
        arr = record(
            spec, transitions, policy, seed=seed, num_envs=num_envs, progress=progress, desc=f"dataset seed {seed}"
        )
        walls.append(round(time.time() - t0, 1))
        rets = arr["episode_returns"]
        se = float(np.std(rets) / np.sqrt(max(len(rets), 1)))
        means.append(float(np.mean(rets)))
        lows.append(means[-1] - 2 * se)
        highs.append(means[-1] + 2 * se)
        all_returns.append(rets)
    rets = np.concatenate(all_returns)
    stats = {
        "env": spec.name,
        "gym_id": spec.gym_id,
        **(info or {}),
        "default_dataset": {
            "transitions": transitions,
            "num_envs": num_envs,
            "seeds": list(seeds),
            "mean_returns": [round(m, 1) for m in means],
            "wall_s": walls,
            "episodes_per_dataset": [len(r) for r in all_returns],
        },
        "mean_return_range": [round(min(lows), 1), round(max(highs), 1)],
        "episode_return_range": [round(float(rets.min()), 1), round(float(rets.max()), 1)],
    }
    save_behavior(policy, out, stats)
    return stats
