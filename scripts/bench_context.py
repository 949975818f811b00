"""``flowrl bench context``: what a long context costs a flow-DT and a softmax-DT of the same size.

Two tables from one run, on synthetic data (Hopper's sizes: 11-d states, 3-d actions; costs do not depend
on the values):

- **Training**, for each K in ``--contexts``: one update of a Decision Transformer on ``--batch`` full
  K-step windows (forward, loss, backward, clipped AdamW step: :meth:`flowrl.agents.Trainer.update`, so
  exactly what ``flowrl train`` runs), flow and softmax attention alternating in one process (paired: the
  two share the machine's load), median over ``--repeats`` after ``--warmup`` untimed updates; and the peak
  memory of one update above the resting model and optimizer state. On a CPU that is the resident-set
  high-water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) in a fresh process per case,
  with glibc's mmap threshold pinned low so freed tensors go back to the OS; on CUDA, torch's
  ``max_memory_allocated``.
- **Memory training**, the two ways to train an episode-memory flow-DT on ``--episode``-step episodes
  (``DecisionTransformerConfig.memory_training``): ``episodes`` (``--batch`` whole episodes, gradient through
  every step) against ``segments`` (``--batch`` segments of ``--segment`` steps at starts spread evenly over
  the episode, each continuing the no-grad state of the steps before it): time and peak memory per update,
  and per step that carries loss.
- **Rollout**, time per environment step (one ``policy.act`` for ``--envs`` environments at once; synthetic
  observations, no simulator) at episode steps ``--steps``, each the mean over the ``--bin`` steps ending
  there: ``flow episode`` (a memory model: one recurrent state per environment, constant cost per step),
  ``flow window`` and ``softmax window`` (K = ``--window``, the last K steps recomputed every step once the
  window is full), and ``softmax window`` with K = the longest episode (the whole episode recomputed every
  step: softmax's way to condition on the whole episode). A flow window as long as the episode *is* the
  episode rollout (recurrent while t < K), so it has no row of its own.

Models are freshly initialised (dim/layers/heads as ``--dim --layers --heads``; default the ``dt`` preset's
128/3/1). The table prints the machine and its load; the targets of issue 20 are checked at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from flowrl.scripts.argtypes import positive_int
from flowrl.scripts.benchmarking import add_network_arguments, machine_text, set_threads, table

from flowrl.errors import InputError, MissingInputError

HELP = "train-step time and peak memory against context length, rollout time per step against episode length"

OBS_DIM, ACT_DIM = 11, 3
ATTENTIONS = ("flow", "softmax")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--contexts", type=positive_int, nargs="+", default=[20, 100, 250, 1000], help="K (steps)")
    p.add_argument("--batch", type=positive_int, default=8, help="windows per update, the same for every K")
    add_network_arguments(p)
    p.add_argument("--repeats", type=positive_int, default=5, help="timed updates per case (median)")
    p.add_argument("--warmup", type=positive_int, default=2, help="untimed updates per case first")
    p.add_argument("--envs", type=positive_int, default=10, help="environments per policy.act call")
    p.add_argument(
        "--steps", type=positive_int, nargs="+", default=[100, 250, 500, 1000], help="episode steps to report"
    )
    p.add_argument("--bin", type=positive_int, default=20, help="steps averaged per reported rollout step")
    p.add_argument("--window", type=positive_int, default=20, help="K of the window rollouts")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    p.add_argument("--episode", type=positive_int, default=1000, help="episode length of the memory-training table")
    p.add_argument("--segment", type=positive_int, default=100, help="segment length of the memory-training table")
    p.add_argument("--no-designs", action="store_true", help="skip the memory-training table")
    p.add_argument("--no-rollout", action="store_true", help="skip the rollout table")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast in training (as flowrl train --bf16)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")


def run(args) -> int:
    from flowrl.agents.trainer import pick_device

    if args.bin > min(args.steps):
        raise InputError(f"--bin {args.bin} is longer than the first reported step {min(args.steps)}")
    if args.segment > args.episode:
        raise InputError(f"--segment {args.segment} is longer than --episode {args.episode}")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise MissingInputError(f"--json {args.json}: its folder does not exist; create it first")
    device = pick_device(args.device)
    threads = set_threads(args.threads)
    print(
        f"flowrl bench context: dim {args.dim}, {args.layers} layers, {args.heads} heads, batch {args.batch}, "
        f"{'bf16' if args.bf16 else 'fp32'} training on {device}\n{machine_text(threads)}",
        flush=True,
    )
    out: dict[str, Any] = {
        "device": str(device),
        "threads": threads,
        "model": _model(args),
        "train": [],
        "designs": [],
        "rollout": [],
    }
    for K in args.contexts:
        row = _time_updates(args, K, device)
        if not args.no_memory:
            for att in ATTENTIONS:
                row[att]["peak_mib"] = _peak_memory(args, K, att, device)
        out["train"].append({"K": K, **row})
        print(f"  K={K}: " + ", ".join(f"{a} {row[a]['ms']:.0f} ms" for a in ATTENTIONS), flush=True)
    print(_train_table(out["train"]))
    if not args.no_designs:
        out["designs"] = _designs(args, device)
        print(_designs_table(out["designs"], args))
    if not args.no_rollout:
        out["rollout"] = _rollouts(args, device)
        print(_rollout_table(out["rollout"], args.steps))
    out["targets"] = _targets(out, args.steps)
    for line in out["targets"]:
        print(line["text"])
    out["machine"] = machine_text(threads)
    if args.json:
        from flowrl.atomic import write_json

        write_json(args.json, out)
    return 0


# ---------------------------------------------------------------------------------------------- training


def _model(args) -> dict:
    return {"dim": args.dim, "layers": args.layers, "heads": args.heads, "batch": args.batch}


def _trainer(args, K: int, attention: str, device, design: str | None = None):
    """A Trainer for a fresh DT with context K and a synthetic full batch of K-step windows; with ``design``
    ("episodes" or "segments") a memory flow-DT and a batch of ``K``-step episodes (see :func:`_designs`)."""
    import numpy as np
    from flowrl.agents import DecisionTransformerConfig, TrainConfig, make_agent
    from flowrl.agents.trainer import Trainer
    from flowrl.envs import ContextBatch, TrajectoryDataset

    memory: dict[str, Any] = {} if design is None else {"memory": True, "memory_training": design}
    context = args.segment if design == "segments" else K
    cfg = DecisionTransformerConfig(
        context=context,
        max_timestep=max(K, 1000),
        dim=args.dim,
        depth=args.layers,
        heads=args.heads,
        attention=attention,
        **memory,
    )
    agent = make_agent(cfg, OBS_DIM, ACT_DIM, seed=0).to(device)
    rng = np.random.default_rng(0)
    n = max(K, 2)
    timeouts = np.zeros(n, bool)
    timeouts[-1] = True
    data = TrajectoryDataset.from_arrays(
        rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        rng.uniform(-1, 1, (n, ACT_DIM)).astype(np.float32),
        rng.normal(size=n).astype(np.float32),
        np.zeros(n, bool),
        timeouts,
        {},
    )
    trainer = Trainer(agent, data, TrainConfig(eval_episodes=0, device=str(device), bf16=args.bf16), progress=False)
    B = args.batch
    if design is not None:
        return trainer, _episode_batch(rng, B, K, args.segment if design == "segments" else None)
    batch = ContextBatch(
        rng.normal(size=(B, K, OBS_DIM)).astype(np.float32),
        rng.uniform(-1, 1, (B, K, ACT_DIM)).astype(np.float32),
        rng.normal(size=(B, K, 1)).astype(np.float32),
        rng.normal(size=(B, K, 1)).astype(np.float32),
        np.tile(np.arange(K), (B, 1)),
        np.ones((B, K), np.float32),
    )
    return trainer, batch


def _episode_batch(rng, B: int, L: int, segment: int | None):
    """B synthetic L-step episodes; with ``segment``, loss on ``segment`` steps from starts spread evenly
    over [0, L - segment] (the mean prefix is then half the rest of the episode)."""
    import numpy as np
    from flowrl.envs import EpisodeBatch

    starts = np.zeros(B, np.int64) if segment is None else np.linspace(0, L - segment, B).round().astype(np.int64)
    steps = np.arange(L)
    ends = L if segment is None else starts + segment
    mask = ((steps >= starts[:, None]) & (steps < np.broadcast_to(ends, (B,))[:, None])).astype(np.float32)
    return EpisodeBatch(
        rng.normal(size=(B, L, OBS_DIM)).astype(np.float32),
        rng.uniform(-1, 1, (B, L, ACT_DIM)).astype(np.float32),
        rng.normal(size=(B, L, 1)).astype(np.float32),
        rng.normal(size=(B, L, 1)).astype(np.float32),
        np.tile(steps, (B, 1)),
        mask,
        starts,
    )


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_updates(args, K: int, device) -> dict:
    """Median ms per update of the flow and softmax DTs, alternating (paired), and their paired ratio."""
    row = _time_cases(args, {att: _trainer(args, K, att, device) for att in ATTENTIONS}, device)
    row["softmax_over_flow"] = statistics.median(s / f for s, f in zip(row["softmax"]["s"], row["flow"]["s"]))
    for att in ATTENTIONS:
        del row[att]["s"]
    return row


def _time_cases(args, cases: dict, device) -> dict:
    """Median ms per update of each (trainer, batch) in ``cases``, the cases alternating (paired)."""
    for trainer, batch in cases.values():
        for _ in range(args.warmup):
            trainer.update(batch)
        _sync(device)
    names = list(cases)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            trainer, batch = cases[name]
            t0 = time.perf_counter()
            trainer.update(batch)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    return {
        name: {"ms": 1e3 * statistics.median(ts), "all_ms": [1e3 * t for t in ts], "s": ts}
        for name, ts in times.items()
    }


def _peak_memory(args, K: int, attention: str, device, design: str | None = None) -> float | None:
    """MiB one update needs above the resting model and optimizer state (see the module docstring)."""
    if device.type == "cuda":
        import torch

        trainer, batch = _trainer(args, K, attention, device, design)
        trainer.update(batch)  # the optimizer's state exists from here on
        _sync(device)
        gc.collect()
        torch.cuda.reset_peak_memory_stats(device)
        rest = torch.cuda.memory_allocated(device)
        trainer.update(batch)
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - rest) / 2**20
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    case = {**vars(args), "K": K, "attention": attention, "design": design, "threads": args.threads or 0}
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run(
        [sys.executable, "-m", "flowrl.scripts.bench_context", "--worker", json.dumps(case, default=str)],
        capture_output=True,
        text=True,
        env=env,
    )
    if proc.returncode != 0:
        print(f"  peak memory {attention} K={K}: failed ({proc.stderr.strip()[-200:]})", file=sys.stderr)
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def _proc_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def _memory_worker(case: dict) -> float:
    import torch

    if case["threads"]:
        torch.set_num_threads(case["threads"])
    args = argparse.Namespace(**case)
    trainer, batch = _trainer(args, case["K"], case["attention"], torch.device("cpu"), case["design"])
    trainer.update(batch)
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := the current RSS
    rest = _proc_bytes("VmRSS")
    trainer.update(batch)
    return (_proc_bytes("VmHWM") - rest) / 2**20


def _train_table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["K"] >= 100), rows[0])
    body = []
    for r in rows:
        f, s = r["flow"], r["softmax"]
        scale = r["K"] / base["K"]
        body.append(
            [
                r["K"],
                3 * r["K"],
                f"{f['ms']:.1f}",
                f"{s['ms']:.1f}",
                f"{r['softmax_over_flow']:.2f}x",
                f"{f['ms'] / base['flow']['ms'] / scale:.2f}",
                "-" if f.get("peak_mib") is None else f"{f['peak_mib']:.0f}",
                "-" if s.get("peak_mib") is None else f"{s['peak_mib']:.0f}",
            ]
        )
    head = [
        "K (steps)",
        "tokens",
        "flow ms/update",
        "softmax ms/update",
        "softmax / flow (paired)",
        f"flow time / linear from K={base['K']}",
        "flow peak MiB",
        "softmax peak MiB",
    ]
    return table(head, body)


# ---------------------------------------------------------------------------------------------- memory training


DESIGNS = ("episodes", "segments")


def _designs(args, device) -> list[dict]:
    """Update time and peak memory of the two memory-training designs on ``--episode``-step episodes."""
    L = args.episode
    timed = _time_cases(args, {d: _trainer(args, L, "flow", device, d) for d in DESIGNS}, device)
    rows = []
    for d in DESIGNS:
        loss_steps = args.batch * (L if d == "episodes" else args.segment)
        row = {"design": d, "ms": timed[d]["ms"], "all_ms": timed[d]["all_ms"], "loss_steps": loss_steps}
        row["us_per_loss_step"] = 1e3 * row["ms"] / loss_steps
        row["peak_mib"] = None if args.no_memory else _peak_memory(args, L, "flow", device, d)
        rows.append(row)
        print(f"  memory training {d}: {row['ms']:.0f} ms/update", flush=True)
    return rows


def _designs_table(rows: list[dict], args) -> str:
    label = {
        "episodes": f"episodes: {args.batch} x {args.episode} steps, gradient through all",
        "segments": f"segments: {args.batch} x {args.segment} steps after a no-grad prefix "
        f"(mean {(args.episode - args.segment) // 2})",
    }
    body = [
        [
            label[r["design"]],
            r["loss_steps"],
            f"{r['ms']:.1f}",
            f"{r['us_per_loss_step']:.1f}",
            "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}",
        ]
        for r in rows
    ]
    head = ["memory training (flow)", "steps with loss", "ms/update", "µs per step with loss", "peak MiB"]
    return table(head, body)


# ---------------------------------------------------------------------------------------------- rollout


def _rollout_variants(args) -> list[tuple[str, dict, str]]:
    longest = max(args.steps)
    return [
        ("flow episode (memory model)", {"attention": "flow", "memory": True, "context": longest}, "episode"),
        (f"flow window K={args.window}", {"attention": "flow", "context": args.window}, "window"),
        (f"softmax window K={args.window}", {"attention": "softmax", "context": args.window}, "window"),
        (f"softmax window K={longest}", {"attention": "softmax", "context": longest}, "window"),
    ]


def _rollouts(args, device) -> list[dict]:
    import numpy as np
    from flowrl.agents import DecisionTransformerConfig, make_agent

    longest = max(args.steps)
    rows = []
    for label, kw, mode in _rollout_variants(args):
        cfg = DecisionTransformerConfig(
            max_timestep=max(longest, 1000), dim=args.dim, depth=args.layers, heads=args.heads, **kw
        )
        agent = make_agent(cfg, OBS_DIM, ACT_DIM, seed=0).to(device)
        policy = agent.make_policy(rollout=mode)
        rng = np.random.default_rng(0)
        obs = rng.normal(size=(longest, args.envs, OBS_DIM)).astype(np.float32)
        rewards = np.ones(args.envs, np.float32)
        policy.reset(np.ones(args.envs, bool), target_return=1000.0)
        per_step = np.zeros(longest)
        for t in range(longest):
            t0 = time.perf_counter()
            policy.act(obs[t], rewards)
            _sync(device)
            per_step[t] = time.perf_counter() - t0
        ms = {s: 1e3 * float(per_step[s - args.bin : s].mean()) for s in args.steps}
        rows.append({"variant": label, "ms": ms})
        print(f"  {label}: " + ", ".join(f"t={s} {v:.2f} ms" for s, v in ms.items()), flush=True)
    return rows


def _rollout_table(rows: list[dict], steps: list[int]) -> str:
    first, last = min(steps), max(steps)
    head = ["rollout", *[f"ms/step at t={s}" for s in steps], f"t={last} / t={first}"]
    body = [
        [r["variant"], *[f"{r['ms'][s]:.2f}" for s in steps], f"{r['ms'][last] / r['ms'][first]:.2f}x"] for r in rows
    ]
    return table(head, body)


def _targets(out: dict, steps: list[int]) -> list[dict]:
    """Issue 20's cost targets, where this run measured what they need."""
    by_k = {r["K"]: r for r in out["train"]}
    res = []
    if 100 in by_k and 1000 in by_k:
        growth = by_k[1000]["flow"]["ms"] / by_k[100]["flow"]["ms"] / 10
        res.append({"target": "flow growth", "value": growth, "met": growth <= 1.3})
        res[-1]["text"] = (
            f"target: flow update time grows <= 1.3x faster than linear from K=100 to K=1000: {growth:.2f}x"
        )
    if 1000 in by_k:
        ratio = by_k[1000]["softmax_over_flow"]
        res.append({"target": "flow vs softmax at K=1000", "value": ratio, "met": ratio >= 3.0})
        res[-1]["text"] = f"target: flow >= 3x faster per update than softmax at K=1000: {ratio:.2f}x"
    episode = next((r for r in out["rollout"] if r["variant"].startswith("flow episode")), None)
    if episode is not None and 100 in steps and 1000 in steps:
        flat = episode["ms"][1000] / episode["ms"][100]
        res.append({"target": "episode rollout flat", "value": flat, "met": flat <= 1.2})
        res[-1]["text"] = f"target: episode rollout time per step at t=1000 within 1.2x of t=100: {flat:.2f}x"
    for r in res:
        r["text"] += " (met)" if r["met"] else " (NOT met)"
    return res


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(_memory_worker(json.loads(sys.argv[2])))
    else:
        raise SystemExit("usage: python -m flowrl.scripts.bench_context --worker CASE_JSON (internal)")
