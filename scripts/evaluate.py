"""``flowrl evaluate CHECKPOINT``: roll out a trained agent in its environment and print its scores.

CHECKPOINT is a run folder (its latest checkpoint is used), a checkpoint folder or a saved agent.
Decision Transformers are evaluated once per target return (default: the env's published targets).
"""

from __future__ import annotations

from pathlib import Path

from flowrl.scripts.argtypes import UsageError, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a checkpoint with vectorized rollouts", description=__doc__)
    p.add_argument("checkpoint", help="run folder, checkpoint folder or saved agent")
    p.add_argument("--episodes", type=positive_int, default=10, help="episodes per target return (default 10)")
    p.add_argument("--num-envs", type=positive_int, default=10, help="environments stepped together (default 10)")
    p.add_argument(
        "--target-return",
        type=float,
        nargs="+",
        default=None,
        metavar="R",
        help="DT target return(s) (default: the env's published targets)",
    )
    p.add_argument("--env", default=None, help="environment (default: the one the agent was trained for)")
    p.add_argument("--seed", type=int, default=10_000, help="episode i starts from reset(seed=SEED+i)")
    p.add_argument("--max-episode-steps", type=positive_int, default=None, help="cap episode length")
    p.add_argument("--video", default=None, metavar="FILE", help="record episode 0 to FILE (.mp4 or .gif)")
    p.add_argument(
        "--rollout",
        choices=("window", "staggered", "episode"),
        default=None,
        help="DT context at each step (default: the model's own, episode for memory models, else window): "
        "window (the last K steps), staggered (flow: "
        "recurrent states restarted every --restart-every steps, a window of K-s+1..K steps, several times "
        "faster) or episode (flow: one recurrent state over the whole episode)",
    )
    p.add_argument(
        "--restart-every",
        type=positive_int,
        default=None,
        help="--rollout staggered: restart a recurrent state every this many steps (default: half the context)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="processes to split the episodes across (forked, one torch thread each; CPU only; default 1)",
    )
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args) -> int:
    from flowrl.agents import load_agent, pick_device
    from flowrl.envs import evaluate, get_spec
    from flowrl.scripts.report import eval_table

    from flowrl import atomic

    if args.json is not None and not Path(args.json).parent.exists():
        raise UsageError(f"--json: folder {Path(args.json).parent} does not exist")
    agent = load_agent(args.checkpoint, device=pick_device(args.device))
    env = args.env or agent.env_name
    if env is None:
        raise UsageError("the checkpoint names no environment; pass --env")
    targets: list = [None]
    if agent.algo == "dt":
        targets = args.target_return or list(get_spec(env).target_returns or agent.dataset_targets())
    elif args.target_return:
        raise UsageError("--target-return applies to Decision Transformers, not to BC")
    if args.restart_every and args.rollout != "staggered":
        raise UsageError("--restart-every needs --rollout staggered")
    if args.workers > 1 and args.video:
        raise UsageError("--video needs --workers 1")
    if args.workers > 1 and agent.device.type != "cpu":
        raise UsageError(f"--workers > 1 forks CPU processes; the agent is on {agent.device} (use --device cpu)")
    results = evaluate(
        agent.make_policy(rollout=args.rollout, restart_every=args.restart_every),  # BC: window only
        env,
        episodes=args.episodes,
        num_envs=args.num_envs,
        seed=args.seed,
        target_returns=targets,
        video=args.video,
        max_episode_steps=args.max_episode_steps,
        progress=not args.quiet,
        ref_scores=agent.reference_scores(),
        workers=args.workers,
    )
    rows = [r.to_dict() for r in results]
    print(f"{args.checkpoint}: {agent.algo} on {rows[0]['env']}, {args.episodes} episodes per target")
    print(eval_table(rows))
    if any(r["video"] for r in rows):
        print(f"video: {next(r['video'] for r in rows if r['video'])}")
    if args.json:
        atomic.write_json(args.json, rows)
    return 0
