"""Run d3rlpy's Decision Transformer and write what was measured as JSON.

This file is executed by the python of d3rlpy's own virtual environment (see ``d3rlpy_venv.py``), so it
imports only d3rlpy, torch, numpy, h5py and gymnasium, never flowrl. flowrl drives it through
``flowrl.scripts.peers.run.run_d3rlpy``; by hand::

    PY=~/.cache/flowrl/peers/d3rlpy-2.8.1/bin/python
    $PY scripts/peers/d3rlpy_runner.py train-speed --dataset hopper-medium.hdf5 --steps 300 --json out.json
    $PY scripts/peers/d3rlpy_runner.py rollout-speed --env Hopper-v5 --episodes 10 --json out.json
    $PY scripts/peers/d3rlpy_runner.py scores --dataset hopper-medium.hdf5 --steps 1000 --seed 0 \\
        --env Hopper-v5 --target-return 3600 --json out.json

The model size (context, dim, layers, heads, batch) is set from the command line; everything else follows
d3rlpy's own Decision Transformer recipe for D4RL (its ``reproductions/offline/decision_transformer.py``):
a single linear state encoder of width ``dim``, standardised observations, rewards times 1e-3, AdamW
(lr 1e-4, weight decay 1e-4, grad-norm clip 0.25) with 10k linear warmup steps, learned absolute
timestep embeddings (``PositionEncodingType.SIMPLE``), ReLU in the MLPs, dropout 0.1.

Timings exclude interpreter start, imports, dataset loading and model building: training is timed between
step callbacks of ``fit`` after ``--warmup`` untimed steps, rollouts around
``evaluate_transformer_with_environment`` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

SCHEMA = 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _set_threads(args.threads)
    load_before = _loadavg()
    result = {"peer": "d3rlpy", "schema": SCHEMA, "subcommand": args.command, **COMMANDS[args.command](args)}
    # other processes on the machine skew every timing: keep the 1-minute load next to the numbers
    result["loadavg_1m"] = {"before": load_before, "after": _loadavg()}
    result["model"] = _model_args(args)
    result["threads"] = args.threads
    result["versions"] = _versions()
    text = json.dumps(result, indent=2) + "\n"
    if args.json in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.json).write_text(text)
    return 0


# ---------------------------------------------------------------------------------------------- commands
def train_speed(args) -> dict:
    """Time d3rlpy's ``fit`` loop (batch sampling + update) in steps per second."""
    dataset, info = _load_dataset(args.dataset)
    dt = _make_dt(args)
    times, losses = _fit(dt, dataset, args.warmup + args.steps)
    # times[i] is when step i+1 ended, so the timed steps run from times[warmup-1] to the last entry
    timed = times[args.warmup - 1 :]
    windows = _windows(timed, args.repeats)
    total_s = timed[-1] - timed[0] if len(timed) > 1 else float("nan")
    n = len(timed) - 1
    tail = losses[-max(1, n // max(1, args.repeats)) :]
    out = {
        "dataset": info,
        "steps": n,
        "warmup_steps": args.warmup,
        "seconds": total_s,
        "steps_per_s": n / total_s if total_s > 0 else float("nan"),
        "steps_per_s_windows": windows,
        "steps_per_s_median": statistics.median(windows) if windows else float("nan"),
        "final_loss": float(sum(tail) / len(tail)) if tail else float("nan"),
        "first_loss": float(losses[0]) if losses else float("nan"),
    }
    if args.save_model:
        dt.save(args.save_model)
        out["model_path"] = str(Path(args.save_model).absolute())
    return out


def rollout_speed(args) -> dict:
    """Time ``evaluate_transformer_with_environment`` (one env, episodes one after another)."""
    import numpy as np

    env = _make_env(args.env, args.full_length, args.max_episode_steps)
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
    if args.model:
        dt = _load_model(args.model)
        source = "trained"
    else:
        dt = _make_dt(args)
        _build_fresh(dt, obs_dim, act_dim)
        source = "fresh"
    returns, lengths, seconds = _evaluate(dt, env, args.target_return, args.episodes, args.seed)
    steps = int(sum(lengths))
    return {
        "env": args.env,
        "model_source": source,
        "full_length": args.full_length,
        "max_episode_steps": env.spec.max_episode_steps if env.spec else None,
        "target_return": args.target_return,
        "episodes": len(returns),
        "seconds": seconds,
        "env_steps": steps,
        "env_steps_per_s": steps / seconds if seconds > 0 else float("nan"),
        "returns": returns,
        "lengths": lengths,
    }


def scores(args) -> dict:
    """Train for ``--steps`` steps, then evaluate each target return over ``--episodes`` episodes."""
    dataset, info = _load_dataset(args.dataset)
    dt = _make_dt(args)
    t0 = time.perf_counter()
    times, losses = _fit(dt, dataset, args.steps)
    train_s = time.perf_counter() - t0
    env = _make_env(args.env, full_length=False)
    evals = []
    for target in args.target_return:
        returns, lengths, seconds = _evaluate(dt, env, target, args.episodes, args.seed)
        evals.append({"target_return": target, "returns": returns, "lengths": lengths, "seconds": seconds})
    if args.save_model:
        dt.save(args.save_model)
    return {
        "dataset": info,
        "env": args.env,
        "seed": args.seed,
        "steps": args.steps,
        "train_seconds": train_s,
        "final_loss": float(sum(losses[-100:]) / len(losses[-100:])) if losses else float("nan"),
        "evaluations": evals,
    }


COMMANDS = {"train-speed": train_speed, "rollout-speed": rollout_speed, "scores": scores}


# ---------------------------------------------------------------------------------------------- d3rlpy glue
def _make_dt(args):
    import d3rlpy

    d3rlpy.seed(args.seed)
    config = d3rlpy.algos.DecisionTransformerConfig(
        batch_size=args.batch,
        context_size=args.context,
        num_heads=args.heads,
        num_layers=args.layers,
        max_timestep=args.max_timestep,
        # the state embedding is one linear layer of width dim, as in the original DT
        encoder_factory=d3rlpy.models.VectorEncoderFactory([args.dim], exclude_last_activation=True),
        learning_rate=1e-4,
        optim_factory=d3rlpy.optimizers.AdamWFactory(
            weight_decay=1e-4,
            clip_grad_norm=0.25,
            lr_scheduler_factory=d3rlpy.optimizers.WarmupSchedulerFactory(
                warmup_steps=getattr(args, "warmup_steps", 10000)
            ),
        ),
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        reward_scaler=d3rlpy.preprocessing.MultiplyRewardScaler(1e-3),
        position_encoding_type=d3rlpy.PositionEncodingType.SIMPLE,
        compile_graph=args.compile,
    )
    return config.create(device=args.device)


def _build_fresh(dt, obs_dim: int, act_dim: int) -> None:
    """Initialise the networks without data; an identity standardiser keeps the trained model's op count."""
    import numpy as np

    scaler = dt.config.observation_scaler
    scaler.mean = np.zeros(obs_dim, dtype=np.float32)
    scaler.std = np.ones(obs_dim, dtype=np.float32)
    dt.create_impl((obs_dim,), act_dim)


def _load_model(path: str):
    import d3rlpy

    return d3rlpy.load_learnable(path, device="cpu:0")


def _fit(dt, dataset, n_steps: int) -> tuple[list[float], list[float]]:
    """Run d3rlpy's own ``fit`` for ``n_steps``; return the perf_counter at the end of each step and losses."""
    from d3rlpy.logging import NoopAdapterFactory

    times: list[float] = []
    losses: list[float] = []
    update = dt.update

    def recording_update(batch):  # fit calls self.update(batch): record the loss it already synced
        metrics = update(batch)
        losses.append(float(metrics.get("loss", float("nan"))))
        return metrics

    dt.update = recording_update
    try:
        dt.fit(
            dataset,
            n_steps=n_steps,
            n_steps_per_epoch=n_steps,
            logger_adapter=NoopAdapterFactory(),
            show_progress=False,
            save_interval=10**9,
            callback=lambda algo, epoch, step: times.append(time.perf_counter()),
        )
    finally:
        del dt.update
    return times, losses


def _evaluate(dt, env, target_return: float, episodes: int, seed: int) -> tuple[list[float], list[int], float]:
    from d3rlpy.metrics import evaluate_transformer_with_environment

    env.reset(seed=seed)  # seeds the env's generator; d3rlpy resets it again per episode without a seed
    env.action_space.seed(seed)
    stats = env  # RecordEpisodeStatistics (outermost) keeps every finished episode's return and length
    stats.return_queue.clear()
    stats.length_queue.clear()
    wrapper = dt.as_stateful_wrapper(target_return=target_return)
    t0 = time.perf_counter()
    evaluate_transformer_with_environment(wrapper, env, n_trials=episodes)
    seconds = time.perf_counter() - t0
    returns = [float(r) for r in stats.return_queue]
    lengths = [int(n) for n in stats.length_queue]
    return returns, lengths, seconds


def _make_env(env_id: str, full_length: bool, max_episode_steps: int | None = None):
    """A gymnasium env wrapped to record episode returns; ``full_length`` turns off early termination."""
    import gymnasium

    limit = max_episode_steps or None  # None: the registered limit
    env = None
    if full_length:
        try:  # MuJoCo locomotion tasks that end on "unhealthy" states take this keyword
            env = gymnasium.make(env_id, max_episode_steps=limit, terminate_when_unhealthy=False)
        except TypeError:
            env = None
    if env is None:
        env = gymnasium.make(env_id, max_episode_steps=limit)
    return gymnasium.wrappers.RecordEpisodeStatistics(env, buffer_length=10**6)


def _load_dataset(path: str):
    """A D4RL-format HDF5 file as a d3rlpy ``MDPDataset``; episodes end on terminals or timeouts."""
    import h5py
    import numpy as np
    from d3rlpy.constants import ActionSpace
    from d3rlpy.dataset import MDPDataset

    with h5py.File(path, "r") as f:
        missing = [k for k in ("observations", "actions", "rewards", "terminals") if k not in f]
        if missing:
            raise SystemExit(f"d3rlpy_runner: {path} lacks D4RL keys {missing}")
        obs = np.asarray(f["observations"], dtype=np.float32)
        act = np.asarray(f["actions"], dtype=np.float32)
        rew = np.asarray(f["rewards"], dtype=np.float32).reshape(-1)
        term = np.asarray(f["terminals"], dtype=np.float32).reshape(-1)
        tout = np.asarray(f["timeouts"], dtype=np.float32).reshape(-1) if "timeouts" in f else np.zeros_like(term)
        attrs = {k: _jsonable(v) for k, v in f.attrs.items()}
    tout[-1] = max(tout[-1], 1.0 - term[-1])  # the last transition always closes an episode
    dataset = MDPDataset(
        obs, act, rew, term, timeouts=tout, action_space=ActionSpace.CONTINUOUS, action_size=act.shape[1]
    )
    info = {
        "path": str(Path(path).absolute()),
        "transitions": int(len(obs)),
        "episodes": len(dataset.episodes),
        "attrs": attrs,
    }
    return dataset, info


# ---------------------------------------------------------------------------------------------- helpers
def _windows(times: list[float], repeats: int) -> list[float]:
    """Steps/s over ``repeats`` equal consecutive windows of step end times."""
    n = len(times) - 1
    repeats = max(1, min(repeats, n))
    if n < 1:
        return []
    bounds = [round(i * n / repeats) for i in range(repeats + 1)]
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        dt = times[b] - times[a]
        if b > a and dt > 0:
            out.append((b - a) / dt)
    return out


def _set_threads(threads: int) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)


def _model_args(args) -> dict:
    keys = ("context", "dim", "layers", "heads", "batch", "max_timestep", "device", "compile", "seed")
    return {k: getattr(args, k) for k in keys if hasattr(args, k)}


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _versions() -> dict:
    import d3rlpy
    import gymnasium
    import mujoco
    import numpy
    import torch

    return {
        "d3rlpy": d3rlpy.__version__,
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


def _jsonable(v):
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    return v


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="d3rlpy_runner.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--context", type=int, default=20, help="context length K in timesteps")
        sp.add_argument("--dim", type=int, default=128, help="embedding width")
        sp.add_argument("--layers", type=int, default=3, help="transformer blocks")
        sp.add_argument("--heads", type=int, default=1, help="attention heads")
        sp.add_argument("--batch", type=int, default=64, help="trajectory segments per update")
        sp.add_argument("--max-timestep", type=int, default=1000, help="size of the timestep embedding table")
        sp.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
        sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("--device", default="cpu:0")
        sp.add_argument("--compile", action="store_true", help="d3rlpy's compile_graph (torch.compile)")
        sp.add_argument("--json", default=None, help="write the result here (default: stdout)")

    sp = sub.add_parser("train-speed", help="steps/s of fit at a fixed model size")
    common(sp)
    sp.add_argument("--dataset", required=True, help="D4RL-format .hdf5 file")
    sp.add_argument("--steps", type=int, default=300, help="timed update steps")
    sp.add_argument("--warmup", type=_positive, default=10, help="untimed steps before timing starts (>= 1)")
    sp.add_argument("--repeats", type=int, default=5, help="windows the timed steps are split into")
    sp.add_argument("--save-model", default=None, help="save the trained model (d3rlpy .d3 file)")

    sp = sub.add_parser("rollout-speed", help="wall time of evaluate_transformer_with_environment")
    common(sp)
    sp.add_argument("--env", default="Hopper-v5", help="gymnasium id")
    sp.add_argument("--episodes", type=int, default=10)
    sp.add_argument("--target-return", type=float, default=3600.0)
    sp.add_argument("--model", default=None, help="a trained .d3 file (default: freshly initialised)")
    sp.add_argument("--max-episode-steps", type=int, default=None, help="time limit (default: the env's own)")
    sp.add_argument(
        "--full-length",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="disable early termination so every episode runs to the time limit (default: on)",
    )

    sp = sub.add_parser("scores", help="train, then evaluate raw returns")
    common(sp)
    sp.add_argument("--dataset", required=True, help="D4RL-format .hdf5 file")
    sp.add_argument("--steps", type=int, required=True, help="update steps")
    sp.add_argument(
        "--warmup-steps",
        type=int,
        default=10000,
        help="linear learning-rate warmup (d3rlpy's D4RL recipe: 10000; shorten for short budgets)",
    )
    sp.add_argument("--env", default="Hopper-v5", help="gymnasium id")
    sp.add_argument("--target-return", type=float, nargs="+", required=True)
    sp.add_argument("--episodes", type=int, default=10)
    sp.add_argument("--save-model", default=None, help="save the trained model (d3rlpy .d3 file)")
    return p


if __name__ == "__main__":
    sys.exit(main())
