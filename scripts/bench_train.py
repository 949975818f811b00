"""``flowrl bench train``: training steps/s of flowrl's Decision Transformers against d3rlpy's, side by side.

Every variant trains on the same dataset at the same model size (default K=20, dim 128, 3 layers, 1 head,
batch 64, the original DT's Gym setting) with the same recipe (AdamW 1e-4, weight decay 1e-4, grad clip
0.25, 10k warmup, dropout 0.1, ReLU), for the same number of steps:

- ``flow``       flowrl's DT with causal Flow-Attention, float32
- ``flow-bf16``  the same with bfloat16 autocast (weights stay float32)
- ``softmax``    flowrl's DT with softmax attention (the original DT's attention)
- ``d3rlpy``     d3rlpy 2.8.1's ``DecisionTransformer``, run through ``fit`` in its own virtual environment
                 (created on first use; see ``flowrl.scripts.peers``) with the same torch thread count

A step is one sampled batch plus one optimiser update. Repeats alternate between the variants (the order
rotates every repeat) so that load from other processes falls on all of them alike; the table shows the
median steps/s over repeats. Every timed block, on both sides, follows ``--warmup`` untimed steps of the
same variant (d3rlpy: each repeat is a fresh process whose start-up and imports are not timed). On the
2-core VM a process that resumes after another one ran (or after idling) is ~15% slower for several
seconds, so a block timed straight after the peer's run would be measured cold.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from flowrl.scripts.argtypes import positive_int
from flowrl.scripts.benchmarking import (
    add_model_arguments,
    add_subset_argument,
    d4rl_file,
    describe_dataset,
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

HELP = "training steps/s: flowrl flow-DT (fp32, bf16), softmax-DT and d3rlpy's DT, same data and model size"

VARIANTS = ("flow", "flow-bf16", "softmax", "d3rlpy")
LABELS = {
    "flow": "flowrl flow-DT fp32",
    "flow-bf16": "flowrl flow-DT bf16",
    "softmax": "flowrl softmax-DT",
    "d3rlpy": "d3rlpy DT 2.8.1",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="hopper-medium",
        help="dataset path or name (a D4RL .hdf5 is given to d3rlpy as is; anything else is written "
        "to a temporary D4RL file first); default %(default)s",
    )
    p.add_argument("--steps", type=positive_int, default=100, help="timed update steps per variant and repeat")
    p.add_argument(
        "--warmup", type=positive_int, default=10, help="untimed update steps before each timed block (both sides)"
    )
    p.add_argument("--repeats", type=positive_int, default=3, help="alternating repeats (median reported)")
    add_subset_argument(p, "--variants", VARIANTS, "variant")
    add_model_arguments(p)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for every variant (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="device for flowrl's variants (and d3rlpy's): cpu, cuda, cuda:N")
    p.add_argument("--peer-timeout", type=float, default=1800.0, help="seconds allowed per d3rlpy run")
    p.add_argument("--json", default=None, help="also write all measurements to this JSON file")


def run(args: argparse.Namespace) -> int:
    from flowrl.agents import pick_device
    from flowrl.envs import load_dataset

    device = pick_device(args.device)  # a bad or missing device: one line, exit 2, before any work
    args.peer_device = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu:0"
    threads = set_threads(args.threads)
    ds = load_dataset(args.dataset)
    args.variants = require_peer(args.variants)
    if not args.variants:
        print("flowrl bench train: nothing left to run", file=sys.stderr)
        return 1
    print(
        f"flowrl bench train: {describe_dataset(args.dataset, ds)}; {model_text(args)}; "
        f"{args.steps} timed steps x {args.repeats} repeats after {args.warmup} warm-up steps on {device}",
        file=sys.stderr,
    )

    trainers = {v: _make_trainer(v, ds, args) for v in args.variants if v != "d3rlpy"}
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    losses: dict[str, float] = {}
    peer_runs: list[dict] = []
    with d4rl_file(args.dataset, ds) as hdf5:
        for r in range(args.repeats):
            for v in rotated(args.variants, r):
                if v == "d3rlpy":
                    res = _d3rlpy_train(hdf5, args, threads)
                    peer_runs.append(res)
                    times[v].append(res["steps_per_s"])
                    losses[v] = res["final_loss"]
                else:
                    _time_updates(trainers[v], args.warmup)
                    seconds, loss = _time_updates(trainers[v], args.steps)
                    times[v].append(args.steps / seconds)
                    losses[v] = loss
                print(f"  repeat {r + 1}/{args.repeats} {LABELS[v]}: {times[v][-1]:.2f} steps/s", file=sys.stderr)

    rows = [
        {
            "variant": v,
            "label": LABELS[v],
            "steps_per_s": times[v],
            "median": statistics.median(times[v]),
            "final_loss": losses.get(v),
        }
        for v in args.variants
    ]
    settings = (
        f"dataset {describe_dataset(args.dataset, ds)}; {model_text(args)}; {args.steps} steps x {args.repeats} repeats"
    )
    record = {
        "bench": "train",
        "dataset": str(args.dataset),
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "rows": rows,
        "d3rlpy_runs": peer_runs,
    }
    print_report(args, threads, settings, format_train_table(rows), record)
    return 0


def format_train_table(rows: list[dict]) -> str:
    """Markdown table: median steps/s, each repeat, last loss and the ratios to d3rlpy (when it ran): of the
    medians, and the median of the per-repeat ratios."""
    peer = next((r for r in rows if r["variant"] == "d3rlpy"), None)
    body = []
    for r in rows:
        ratio = f"{r['median'] / peer['median']:.2f}x" if peer else "-"
        paired = f"{paired_ratio(r['steps_per_s'], peer['steps_per_s']):.2f}x" if peer else "-"
        loss = "-" if r.get("final_loss") is None else f"{r['final_loss']:.4f}"
        reps = " ".join(f"{x:.2f}" for x in r["steps_per_s"])
        body.append([r["label"], f"{r['median']:.2f}", reps, loss, ratio, paired])
    head = ["variant", "steps/s (median)", "per repeat", "last loss", "vs d3rlpy", "vs d3rlpy (paired)"]
    return table(head, body)


# ---------------------------------------------------------------------------------------------- flowrl side
def _make_trainer(variant: str, ds, args):
    from flowrl.agents import TrainConfig, Trainer, make_agent, pick_device

    cfg = dt_config(args, "softmax" if variant == "softmax" else "flow")
    tcfg = TrainConfig(steps=10**9, eval_episodes=0, device=args.device, bf16=variant == "flow-bf16", seed=args.seed)
    agent = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=args.seed).to(pick_device(args.device))
    agent.fit_normalization(ds)
    return Trainer(agent, ds, tcfg, None, progress=False)


def _time_updates(trainer, steps: int) -> tuple[float, float]:
    """Seconds for ``steps`` sample+update steps (ending with the one host sync that reads the loss)."""
    t0 = time.perf_counter()
    for _ in range(steps):
        loss, _ = trainer.update(trainer.sampler.sample(trainer.batch_size))
    last = float(loss)
    return time.perf_counter() - t0, last


# ---------------------------------------------------------------------------------------------- d3rlpy side
def _d3rlpy_train(hdf5: Path, args, threads: int) -> dict:
    from flowrl.scripts.peers import run_d3rlpy

    return run_d3rlpy(
        "train-speed",
        dataset=hdf5,
        steps=args.steps,
        warmup=args.warmup,
        repeats=1,
        threads=threads,
        seed=args.seed,
        timeout=args.peer_timeout,
        device=args.peer_device,
        **peer_model_kwargs(args),
    )
