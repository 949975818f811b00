"""``flowrl bench rollout``: wall-clock of 10 Hopper episodes, flowrl's vectorized evaluation vs d3rlpy's.

Both sides roll out a Decision Transformer of the same size (default K=20, dim 128, 3 layers, 1 head):

- ``flow``            flowrl flow-DT through :func:`flowrl.envs.evaluate` with the default ``window`` rollout
                      (the last K steps, as trained): ``--num-envs`` environments stepped together, one
                      batched forward per step; the recurrent state serves the first K steps of an episode
- ``flow-staggered``  the same agent with ``rollout="staggered"``: recurrent states restarted every
                      ``--restart-every`` steps (default K/2), 3 new tokens per state and step
- ``flow-episode``    the same agent with ``rollout="episode"``: one recurrent state over the whole episode
- ``softmax``         flowrl softmax-DT through the same vectorized evaluation (window recomputed)
- ``d3rlpy``       d3rlpy 2.8.1's ``evaluate_transformer_with_environment``: one environment, episodes one
                   after another, a ``StatefulTransformerWrapper`` forward per step (in its own virtual env)

Models are freshly initialised by default (``--flowrl-checkpoint`` / ``--d3rlpy-model`` load trained ones).
An untrained Hopper falls over within a few dozen steps, and a trained one at its own time, so by default
early termination is switched off (``terminate_when_unhealthy=False``, ``--no-full-length`` to keep it): every
episode runs to the 1000-step time limit and both sides do the same 10,000 environment steps. Wall-clock
covers the rollouts only, not model building, imports or the peer's process start.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from flowrl.scripts.argtypes import positive_int
from flowrl.scripts.benchmarking import (
    add_model_arguments,
    add_subset_argument,
    dt_config,
    model_text,
    paired_ratio,
    peer_model_kwargs,
    print_report,
    require_peer,
    rotated,
    set_threads,
    table,
)

from flowrl.errors import InputError

HELP = "wall-clock of 10 Hopper episodes: flowrl vectorized evaluation vs d3rlpy's sequential evaluation"

VARIANTS = ("flow", "flow-staggered", "flow-episode", "softmax", "d3rlpy")
ROLLOUT = {"flow": "window", "flow-staggered": "staggered", "flow-episode": "episode", "softmax": "window"}
# gymnasium MuJoCo tasks whose episodes end early on an "unhealthy" state (HalfCheetah never does)
UNHEALTHY_TERMINATION = frozenset({"hopper", "walker2d", "ant", "humanoid"})
LABELS = {
    "flow": "flowrl flow-DT (window)",
    "flow-staggered": "flowrl flow-DT (staggered)",
    "flow-episode": "flowrl flow-DT (episode)",
    "softmax": "flowrl softmax-DT",
    "d3rlpy": "d3rlpy DT 2.8.1",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", default="Hopper-v5", help="env name or gymnasium id; default %(default)s")
    p.add_argument("--episodes", type=positive_int, default=10, help="episodes per variant")
    p.add_argument("--num-envs", type=positive_int, default=10, help="environments flowrl steps together")
    p.add_argument(
        "--target-return",
        type=float,
        default=None,
        help="return-to-go to condition on (default: the env's first D4RL target, hopper 3600)",
    )
    p.add_argument("--repeats", type=positive_int, default=1, help="alternating repeats (median reported)")
    add_subset_argument(p, "--variants", VARIANTS, "variant")
    p.add_argument(
        "--full-length",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="turn off early termination so every episode runs to the time limit (default: on)",
    )
    p.add_argument("--max-episode-steps", type=positive_int, default=None, help="time limit (default: the env's own)")
    add_model_arguments(p)
    p.add_argument(
        "--flowrl-checkpoint",
        default=None,
        help="a trained flowrl agent (checkpoint or run folder) for the flow and softmax rows; its "
        "attention must match the variant",
    )
    p.add_argument(
        "--restart-every",
        type=positive_int,
        default=None,
        help="flow-staggered: restart a recurrent state every this many steps (default: half the context)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="flowrl rows: processes the episodes are split across (forked, one torch thread each)",
    )
    p.add_argument("--d3rlpy-model", default=None, help="a trained d3rlpy .d3 model for the d3rlpy row")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for every variant (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peer-timeout", type=float, default=1800.0, help="seconds allowed per d3rlpy run")
    p.add_argument("--json", default=None, help="also write all measurements to this JSON file")


def run(args: argparse.Namespace) -> int:
    from flowrl.envs import get_spec

    from flowrl.ops import native

    threads = set_threads(args.threads)
    spec = get_spec(args.env)
    target = args.target_return
    if target is None:
        if not spec.target_returns:
            raise InputError(f"{spec.gym_id} has no default target return; pass --target-return")
        target = spec.target_returns[0]
    args.variants = require_peer(args.variants)
    if not args.variants:
        print("flowrl bench rollout: nothing left to run", file=sys.stderr)
        return 1
    env_kwargs = _full_length_kwargs(spec) if args.full_length else {}
    policies = {v: _make_policy(v, spec, args) for v in args.variants if v != "d3rlpy"}

    seconds: dict[str, list[float]] = {v: [] for v in args.variants}
    steps: dict[str, int] = {}
    returns: dict[str, list[float]] = {}
    for r in range(args.repeats):
        for v in rotated(args.variants, r):
            if v == "d3rlpy":
                res = _d3rlpy_rollout(spec.gym_id, target, args, threads)
                sec, lengths, rets = res["seconds"], res["lengths"], res["returns"]
            else:
                sec, lengths, rets = _flowrl_rollout(policies[v], spec, target, env_kwargs, args)
            seconds[v].append(sec)
            steps[v], returns[v] = int(sum(lengths)), [float(x) for x in rets]
            print(f"  repeat {r + 1}/{args.repeats} {LABELS[v]}: {sec:.2f} s for {steps[v]} env steps", file=sys.stderr)

    rows = [
        {
            "variant": v,
            "label": _label(v, args.workers),
            "seconds": seconds[v],
            "median": statistics.median(seconds[v]),
            "env_steps": steps[v],
            "returns": returns[v],
        }
        for v in args.variants
    ]
    kernel = native.status()
    settings = (
        f"{args.episodes} episodes of {spec.gym_id} (target return {target:g}, "
        f"{'full length' if args.full_length else 'natural termination'}); {model_text(args)}; "
        f"flowrl: {min(args.num_envs, args.episodes)} envs at once, native decode kernel {kernel}"
    )
    record = {
        "bench": "rollout",
        "env": spec.gym_id,
        "episodes": args.episodes,
        "num_envs": args.num_envs,
        "target_return": target,
        "full_length": args.full_length,
        "native_kernel": kernel,
        "rows": rows,
    }
    print_report(args, threads, settings, format_rollout_table(rows), record)
    return 0


def _label(variant: str, workers: int) -> str:
    """The row label, with the worker count of flowrl rows that used several."""
    label = LABELS[variant]
    if variant == "d3rlpy" or workers == 1:
        return label
    if label.endswith(")"):
        return f"{label[:-1]}, {workers} workers)"
    return f"{label} ({workers} workers)"


def format_rollout_table(rows: list[dict]) -> str:
    """Markdown table: median wall-clock, env steps, steps/s, mean return and the speed-up over d3rlpy (of the
    medians, and the median of the per-repeat speed-ups)."""
    peer = next((r for r in rows if r["variant"] == "d3rlpy"), None)
    body = []
    for r in rows:
        speedup = f"{peer['median'] / r['median']:.1f}x" if peer and r["median"] > 0 else "-"
        paired = f"{paired_ratio(peer['seconds'], r['seconds']):.1f}x" if peer and r["median"] > 0 else "-"
        rate = r["env_steps"] / r["median"] if r["median"] > 0 else float("nan")
        mean_ret = statistics.fmean(r["returns"]) if r["returns"] else float("nan")
        reps = " ".join(f"{x:.2f}" for x in r["seconds"])
        body.append(
            [
                r["label"],
                f"{r['median']:.2f}",
                reps,
                f"{r['env_steps']:,}",
                f"{rate:,.0f}",
                f"{mean_ret:.1f}",
                speedup,
                paired,
            ]
        )
    head = ["variant", "wall s (median)", "per repeat", "env steps", "env steps/s", "mean return", "speed-up vs d3rlpy"]
    return table([*head, "speed-up (paired)"], body)


# ---------------------------------------------------------------------------------------------- flowrl side
def _make_policy(variant: str, spec, args):
    from flowrl.agents import load_agent, make_agent
    from flowrl.agents.config import DecisionTransformerConfig
    from flowrl.envs import make_env

    attention = "softmax" if variant == "softmax" else "flow"
    if args.flowrl_checkpoint:
        agent = load_agent(args.flowrl_checkpoint)
        if not isinstance(agent.config, DecisionTransformerConfig):
            raise InputError(
                f"--flowrl-checkpoint is a {agent.algo} agent; the variants roll out Decision Transformers"
            )
        if agent.config.attention != attention:
            raise InputError(
                f"--flowrl-checkpoint has {agent.config.attention} attention; variant {variant!r} "
                f"needs {attention} (pick variants with --variants)"
            )
    else:
        env = make_env(spec)
        try:
            obs_dim, act_dim = int(env.observation_space.shape[0]), int(env.action_space.shape[0])
        finally:
            env.close()
        agent = make_agent(dt_config(args, attention), obs_dim, act_dim, seed=args.seed, env_name=spec.name)
    every = args.restart_every if variant == "flow-staggered" else None
    return agent.make_policy(rollout=ROLLOUT[variant], restart_every=every)


def _flowrl_rollout(policy, spec, target: float, env_kwargs: dict, args) -> tuple[float, list[int], list[float]]:
    from flowrl.envs import evaluate

    t0 = time.perf_counter()
    (res,) = evaluate(
        policy,
        spec,
        episodes=args.episodes,
        num_envs=args.num_envs,
        seed=args.seed,
        target_returns=(target,),
        progress=False,
        env_kwargs=env_kwargs,
        max_episode_steps=args.max_episode_steps,
        workers=args.workers,
    )
    seconds = time.perf_counter() - t0
    return seconds, [int(x) for x in res.lengths], [float(x) for x in res.returns]


def _full_length_kwargs(spec) -> dict:
    """``terminate_when_unhealthy=False`` for the MuJoCo tasks that end on unhealthy states, else nothing."""
    return {"terminate_when_unhealthy": False} if spec.name in UNHEALTHY_TERMINATION else {}


# ---------------------------------------------------------------------------------------------- d3rlpy side
def _d3rlpy_rollout(gym_id: str, target: float, args, threads: int) -> dict:
    from flowrl.scripts.peers import run_d3rlpy

    return run_d3rlpy(
        "rollout-speed",
        env=gym_id,
        episodes=args.episodes,
        target_return=target,
        model=args.d3rlpy_model,
        full_length=args.full_length,
        max_episode_steps=args.max_episode_steps,
        threads=threads,
        seed=args.seed,
        timeout=args.peer_timeout,
        **peer_model_kwargs(args),
    )
