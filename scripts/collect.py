"""``flowrl collect ENV``: build D4RL-style datasets with an SB3 behaviour policy, written as local Minari datasets.

Train, checkpoint and record every level (an interrupted run resumes from its last checkpoint)::

    flowrl collect hopper --levels random,medium,medium-replay,expert,medium-expert --steps 260000

Record one level from an existing policy (SB3 SAC/TD3 ``.zip`` or a flowrl behaviour ``.pt``)::

    flowrl collect hopper --from-policy hopper-medium-sac.zip --level medium --transitions 100000

The memory task ``tmaze`` (:mod:`flowrl.envs.tmaze`) is recorded from its scripted behaviour policy instead
(``flowrl collect tmaze --transitions 200000`` writes ``flowrl/tmaze/mixed-v0``, loadable as ``tmaze-mixed``).

Mazes (D4RL's Maze2D recipe: waypoint planner, PD controller, noise; no training)::

    flowrl collect pointmaze-umaze            # 1M steps, as D4RL; pointmaze-medium 2M, pointmaze-large 4M

Datasets are named ``flowrl/<env>/<level>-v0`` under ``$MINARI_DATASETS_PATH`` (default ``~/.minari/datasets``);
mazes ``flowrl/pointmaze/<maze>-v0`` (load them as ``pointmaze-umaze``).
"""

from __future__ import annotations

import argparse
import errno
import shlex
import sys
from fractions import Fraction

from flowrl.scripts.argtypes import UsageError


def _fraction(text: str) -> float:
    try:
        return float(Fraction(text))
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a fraction: {text!r} (e.g. 1/3 or 0.33)") from None


def _steps(text: str) -> int:
    try:
        value = int(float(text)) if "e" in text.lower() else int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "collect",
        help="build D4RL-style datasets with an SB3 behaviour policy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "env",
        help="environment: hopper, halfcheetah, walker2d, ant, a gymnasium id (Hopper-v5), tmaze (the memory "
        "task), or a maze: pointmaze-umaze, pointmaze-medium, pointmaze-large",
    )
    p.add_argument(
        "--levels",
        default="random,medium,medium-replay,expert,medium-expert",
        help="comma-separated levels to write, 'all' (default: all five) or 'none' (train only)",
    )
    p.add_argument("--steps", type=_steps, default=300_000, help="behaviour-policy training steps (default 300000)")
    p.add_argument("--algo", choices=("sac", "td3"), default="sac", help="SB3 algorithm (default sac, as D4RL)")
    p.add_argument(
        "--checkpoint-every",
        type=_steps,
        default=10_000,
        help="checkpoint + deterministic evaluation every N steps (default 10000)",
    )
    p.add_argument("--eval-episodes", type=_steps, default=5, help="episodes per checkpoint evaluation (default 5)")
    p.add_argument(
        "--medium-fraction",
        type=_fraction,
        default=1 / 3,
        help="medium target = this fraction of the expert's evaluated return (default 1/3)",
    )
    p.add_argument(
        "--medium-rule",
        choices=("closest", "first"),
        default="closest",
        help="medium = checkpoint whose return is closest to the target (default) or first to reach it",
    )
    p.add_argument(
        "--expert-rule",
        choices=("best", "final"),
        default="best",
        help="expert = best evaluated checkpoint (default) or the final one",
    )
    p.add_argument(
        "--transitions",
        type=_steps,
        default=None,
        help="transitions per recorded level (default 100000; D4RL used 1M); mazes: steps in all "
        "(default D4RL's 1M / 2M / 4M)",
    )
    p.add_argument(
        "--action-noise",
        type=float,
        default=0.5,
        help="mazes: standard deviation of the noise on every action (default 0.5, as D4RL)",
    )
    p.add_argument(
        "--ref-episodes",
        type=_steps,
        default=100,
        help="episodes for measured reference scores on envs without D4RL constants (default 100)",
    )
    p.add_argument(
        "--hidden",
        default=None,
        help="actor/critic hidden sizes, e.g. 64,64 (default: SB3's, SAC 256,256 / TD3 400,300)",
    )
    p.add_argument("--batch-size", type=_steps, default=256, help="minibatch per gradient step (default 256)")
    p.add_argument("--learning-starts", type=int, default=100, help="random steps before learning (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed for training and recording (default 0)")
    p.add_argument("--num-envs", type=_steps, default=16, help="env copies stepped together when recording")
    p.add_argument(
        "--run-dir",
        default=None,
        help="training run directory (default ~/.cache/flowrl/collect/ENV-ALGO-seedSEED); reused to resume",
    )
    p.add_argument(
        "--from-policy",
        metavar="PATH",
        default=None,
        help="record from this SB3 SAC/TD3 .zip or flowrl .pt instead of training. Neither can run code: a .zip "
        "is read without unpickling (the actor's weights with torch.load(weights_only=True), the spaces from its "
        "JSON), so it needs no SB3 and no trust in whoever made it",
    )
    p.add_argument("--level", default=None, help="with --from-policy: the level name to write (medium or expert)")
    p.add_argument(
        "--dataset-id",
        default=None,
        help="with --from-policy, tmaze or a maze: Minari id to write (default flowrl/ENV/LEVEL-v0)",
    )
    p.add_argument("--deterministic", action="store_true", help="with --from-policy: act with the mean action")
    p.add_argument(
        "--export-behavior",
        metavar="PATH",
        default=None,
        help="also export the medium policy's actor as a compact flowrl policy (PATH.pt + PATH.json)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace datasets (and an exported policy) that exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    try:
        return _run(args)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise UsageError(e.strerror or str(e)) from None
        raise


def _run(args) -> int:
    from flowrl.envs import collect as C

    command = (
        "flowrl collect " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["collect"] else None
    )
    progress = not args.no_progress
    if args.env.startswith("pointmaze-"):
        return _run_maze(args, command, progress)
    if args.transitions is None:
        args.transitions = 100_000
    if args.env == "tmaze":  # flowrl's memory task: a scripted behaviour policy, nothing to train
        from flowrl.envs.tmaze import record_tmaze

        info = record_tmaze(
            args.transitions, seed=args.seed, dataset=args.dataset_id, overwrite=args.overwrite, progress=progress
        )
        _print_table({"mixed": info})
        return 0
    if args.from_policy is not None:
        if args.level is None:
            raise UsageError("--from-policy needs --level (medium or expert)")
        info = C.collect_from_policy(
            args.env,
            args.from_policy,
            args.level,
            args.transitions,
            seed=args.seed,
            deterministic=args.deterministic,
            num_envs=args.num_envs,
            overwrite=args.overwrite,
            dataset=args.dataset_id,
            ref_episodes=args.ref_episodes,
            progress=progress,
            command=command,
        )
        _print_table({args.level: info})
        return 0
    if args.level is not None or args.dataset_id is not None or args.deterministic:
        raise UsageError("--level, --dataset-id and --deterministic go with --from-policy; use --levels otherwise")
    cfg = C.CollectConfig(
        env=args.env,
        algo=args.algo,
        steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        eval_episodes=args.eval_episodes,
        seed=args.seed,
        levels=args.levels,
        hidden=_hidden(args.hidden),
        batch_size=args.batch_size,
        learning_starts=args.learning_starts,
        transitions=args.transitions,
        medium_fraction=args.medium_fraction,
        medium_rule=args.medium_rule,
        expert_rule=args.expert_rule,
        ref_episodes=args.ref_episodes,
        num_envs=args.num_envs,
        run_dir=args.run_dir,
        overwrite=args.overwrite,
    )
    rows = C.collect(cfg, progress=progress, command=command, export_behavior=args.export_behavior)
    if rows:
        _print_table(rows)
    if args.export_behavior:
        print(f"behaviour policy: {args.export_behavior}")
    return 0


def _run_maze(args, command: str | None, progress: bool) -> int:
    from flowrl.envs.collect.maze import MazeCollectConfig, collect_maze

    cfg = MazeCollectConfig(
        args.env, args.transitions, noise=args.action_noise, seed=args.seed, dataset_id=args.dataset_id
    )
    info = collect_maze(cfg, progress=progress, overwrite=args.overwrite, command=command)
    _print_table({"maze": info})
    print(f"{info['seconds']:.0f}s; load it as {args.env} (flowrl train --dataset {args.env})")
    return 0


def _hidden(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.split(","))
    except ValueError:
        raise UsageError(f"--hidden must be comma-separated integers such as 64,64, got {text!r}") from None


def _print_table(rows: dict) -> None:
    print(f"{'level':<14} {'dataset id':<34} {'transitions':>11} {'episodes':>8} {'mean return':>11}  policy step")
    for level, r in rows.items():
        mean = "-" if r.get("mean_return") is None else f"{r['mean_return']:.1f}"
        step = r.get("policy_step", "-")
        print(f"{level:<14} {r['dataset_id']:<34} {r['transitions']:>11} {r['episodes']:>8} {mean:>11}  {step}")
