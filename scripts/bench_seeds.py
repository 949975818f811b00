"""``flowrl bench seeds``: aggregate training throughput of S seeds trained as one seed-batched model
(:class:`flowrl.agents.seed_training.SeedTrainer`) against S separate runs trained one at a time.

For each attention kind (``flow``, ``softmax``) and each S in ``--seeds-list``, one step is S sampled
batches plus one update of the stacked model; a separate run's step is one batch plus one update of one model
(:class:`flowrl.agents.Trainer`), so S runs one after another reach that run's steps/s in seed-updates/s
whatever S is. The table gives seed-updates per second (batched: steps/s × S) and the ratio to one run at a
time, of the medians and paired (each repeat against the separate run timed in the same repeat).

Repeats alternate between the variants (the order rotates every repeat) and every timed block follows
``--warmup`` untimed steps of the same variant, so that load from other processes falls on all of them alike.
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
    describe_dataset,
    dt_config,
    model_text,
    paired_ratio,
    print_report,
    rotated,
    set_threads,
    table,
)

from flowrl import tiny

HELP = "seed-batched training: seed-updates/s of S seeds as one model vs S separate runs (flow-DT, softmax-DT)"

ATTENTIONS = ("flow", "softmax")
DEFAULT_DATASET = "hopper-medium-v2"


def _seed_counts(text: str) -> list[int]:
    try:
        counts = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated seed counts such as 1,2,5,10, got {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"seed counts must be >= 1, got {text!r}")
    return sorted(set(counts))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default=DEFAULT_DATASET,
        help="dataset path or name (default: %(default)s)",
    )
    p.add_argument("--seeds-list", type=_seed_counts, default=[1, 2, 5, 10], help="seed counts S (default 1,2,5,10)")
    add_subset_argument(p, "--attention", ATTENTIONS, "attention")
    p.add_argument("--steps", type=positive_int, default=20, help="timed steps per variant and repeat")
    p.add_argument("--warmup", type=positive_int, default=3, help="untimed steps before each timed block")
    p.add_argument("--repeats", type=positive_int, default=3, help="alternating repeats (median reported)")
    add_model_arguments(p)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (weights stay float32)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    p.add_argument("--json", default=None, help="also write all measurements to this JSON file")


def run(args: argparse.Namespace) -> int:
    from flowrl.envs import load_dataset

    threads = set_threads(args.threads)
    if tiny.enabled():  # FLOWRL_TINY=1: the two smallest seed counts (flowrl.tiny)
        args.seeds_list = args.seeds_list[:2]
    ds = load_dataset(args.dataset)
    print(
        f"flowrl bench seeds: {describe_dataset(args.dataset, ds)}; {model_text(args)}; S in {args.seeds_list}; "
        f"{args.steps} timed steps x {args.repeats} repeats{' (bf16)' if args.bf16 else ''}",
        file=sys.stderr,
    )
    results = []
    for attention in args.attention:
        variants = {"separate": _single(attention, ds, args)}
        variants.update({f"S={s}": _batched(attention, ds, args, s) for s in args.seeds_list})
        names = list(variants)
        rates: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.repeats):
            for name in rotated(names, r):
                step, seeds = variants[name]
                _time(step, args.warmup)
                rates[name].append(seeds * args.steps / _time(step, args.steps))
                print(
                    f"  {attention} repeat {r + 1}/{args.repeats} {name}: {rates[name][-1]:.2f} seed-updates/s",
                    file=sys.stderr,
                )
        base = rates["separate"]
        rows = [
            {
                "attention": attention,
                "seeds": 1 if name == "separate" else int(name[2:]),
                "variant": name,
                "seed_updates_per_s": rates[name],
                "median": statistics.median(rates[name]),
                "vs_separate": statistics.median(rates[name]) / statistics.median(base),
                "vs_separate_paired": paired_ratio(rates[name], base),
            }
            for name in names
        ]
        results += rows
    settings = (
        f"dataset {describe_dataset(args.dataset, ds)}; {model_text(args)}; {args.steps} steps x {args.repeats} "
        f"repeats{'; bf16 autocast' if args.bf16 else ''}; device {args.device}"
    )
    record = {
        "bench": "seeds",
        "dataset": str(args.dataset),
        "steps": args.steps,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "bf16": args.bf16,
        "device": args.device,
        "rows": results,
    }
    print_report(args, threads, settings, format_seeds_table(results), record)
    return 0


def format_seeds_table(rows: list[dict]) -> str:
    """Markdown table: seed-updates/s (median and per repeat) and the ratios to one run at a time."""
    body = []
    for r in rows:
        what = "one run at a time" if r["variant"] == "separate" else f"{r['seeds']} seeds batched"
        reps = " ".join(f"{x:.2f}" for x in r["seed_updates_per_s"])
        body.append(
            [
                r["attention"],
                what,
                f"{r['median']:.2f}",
                reps,
                f"{r['vs_separate']:.2f}x",
                f"{r['vs_separate_paired']:.2f}x",
            ]
        )
    head = ["attention", "training", "seed-updates/s (median)", "per repeat", "vs separate", "vs separate (paired)"]
    return table(head, body)


def _config(attention: str, args):
    from flowrl.agents import TrainConfig

    return dt_config(args, attention), TrainConfig(steps=10**9, eval_episodes=0, device=args.device, bf16=args.bf16)


def _single(attention: str, ds, args):
    """One separate run's step (sample + update), as ``flowrl train`` runs it."""
    from flowrl.agents import Trainer, make_agent, pick_device

    cfg, tcfg = _config(attention, args)
    agent = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=0).to(pick_device(args.device))
    agent.fit_normalization(ds)
    trainer = Trainer(agent, ds, tcfg, None, progress=False)
    return (lambda: trainer.update(trainer.sampler.sample(trainer.batch_size))[0]), 1


def _batched(attention: str, ds, args, seeds: int):
    """One step of ``seeds`` seeds as one stacked model (S samples + one update)."""
    from flowrl.agents import make_agent, pick_device
    from flowrl.agents.seed_training import SeedTrainer

    cfg, tcfg = _config(attention, args)
    agents = []
    for s in range(seeds):
        agent = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=s).to(pick_device(args.device))
        agent.fit_normalization(ds)
        agents.append(agent)
    trainer = SeedTrainer(agents, ds, tcfg, list(range(seeds)), None, progress=False)
    return (lambda: trainer.update(trainer.sample())[0]), seeds


def _time(step, n: int) -> float:
    """Seconds for ``n`` steps, ending with the host sync that reads the last loss."""
    t0 = time.perf_counter()
    for _ in range(n):
        loss = step()
    float(loss.sum())
    return time.perf_counter() - t0
