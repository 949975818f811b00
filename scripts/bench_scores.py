"""``flowrl bench scores``: D4RL-normalized scores of flowrl flow-DT, softmax-DT, BC and d3rlpy's DT, side by side.

Every algorithm trains on each dataset for the same number of update steps, with each seed, and is then
evaluated in the dataset's environment:

- ``flow-dt``     flowrl's Decision Transformer with causal Flow-Attention
- ``softmax-dt``  flowrl's Decision Transformer with softmax attention (the original DT)
- ``flow-dt-staggered``  the same trained flow-DT (no second training run) evaluated with the ``staggered``
                  rollout (recurrent states restarted every K/2 steps: a window of K/2+1..K steps, several
                  times cheaper per step), to show whether the fast rollout keeps the score
- ``bc``          flowrl's behaviour-cloning MLP (``BCConfig`` defaults: 2x256, batch 256 transitions)
- ``d3rlpy``      d3rlpy 2.8.1's ``DecisionTransformer`` through its runner's ``scores`` command, in its own
                  virtual environment (see ``flowrl.scripts.peers``); left out with a warning if that
                  environment cannot be made

The three DTs share the model size (the ``dt`` preset: K=20, dim 128, 3 layers, 1 head, batch 64) and recipe.
The recipe's 10k-step learning-rate warmup would leave a short run at a fraction of the learning rate, so
flowrl's DTs warm up over ``min(10_000, steps // 10)`` steps (exactly 10k at the literature's 100k steps);
d3rlpy gets the same when its runner takes ``--warmup-steps`` and otherwise keeps its fixed 10k (a warning
says so and the JSON records it). DTs are conditioned on the Decision Transformer paper's higher target
return for the environment (hopper 3600, halfcheetah 12000); BC takes no target.

Scores are D4RL-normalized with D4RL's reference returns (``flowrl.envs.normalized_score``). A run's score
is the mean over its evaluation episodes; a table cell is the mean over seeds ± the standard deviation over
seeds (with one seed: over that seed's episodes). Episode ``i`` starts from ``reset(seed=10_000 + i)`` for
flowrl's agents; the d3rlpy runner seeds its environment once with the training seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from flowrl.scripts.argtypes import positive_int, subset_of
from flowrl.scripts.benchmarking import (
    add_model_arguments,
    d4rl_file,
    machine_text,
    model_dict,
    model_text,
    peer_model_kwargs,
    require_peer,
)

from flowrl.errors import InputError

HELP = "D4RL-normalized scores: flow-DT, softmax-DT, BC and d3rlpy's DT on the shared datasets, same step budget"

ALGOS = ("flow-dt", "flow-dt-staggered", "softmax-dt", "bc", "d3rlpy")
DEFAULT_ALGOS = ("flow-dt", "softmax-dt", "bc", "d3rlpy")
LABELS = {
    "flow-dt": "flowrl flow-DT",
    "flow-dt-staggered": "flowrl flow-DT (staggered rollout)",
    "softmax-dt": "flowrl softmax-DT",
    "bc": "flowrl BC",
    "d3rlpy": "d3rlpy DT",
}
DT_WARMUP = 10_000
"""The Decision Transformer recipe's warmup steps (flowrl's and d3rlpy's default)."""
DEFAULT_DATASETS = ("hopper-medium-v2", "hopper-medium-replay-v2", "halfcheetah-medium-v2")
"""D4RL names, resolved like any ``--dataset`` (D4RL's cache in ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets``)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--datasets",
        nargs="+",
        default=list(DEFAULT_DATASETS),
        metavar="DATASET",
        help="datasets: paths (D4RL .hdf5, .npz, Minari folder) or names; default: the D4RL datasets "
        f"{', '.join(DEFAULT_DATASETS)} from D4RL's local cache ($D4RL_DATASET_DIR or ~/.d4rl/datasets)",
    )
    p.add_argument(
        "--algos",
        type=subset_of(ALGOS, "algo"),
        default=list(DEFAULT_ALGOS),
        help=f"comma-separated subset of: {', '.join(ALGOS)} (default: {','.join(DEFAULT_ALGOS)})",
    )
    p.add_argument(
        "--steps", type=positive_int, default=100_000, help="update steps for every algorithm (default %(default)s)"
    )
    p.add_argument("--seeds", type=positive_int, default=3, help="train with this many seeds (default %(default)s)")
    p.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seeds are FIRST..FIRST+N-1 (default 0); split seeds across processes or add seeds to a finished run",
    )
    p.add_argument(
        "--eval-episodes", type=positive_int, default=10, help="evaluation episodes per run (default %(default)s)"
    )
    p.add_argument("--num-envs", type=positive_int, default=10, help="environments flowrl steps together")
    add_model_arguments(p)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads for every algorithm (0: torch's default)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for flowrl's agents (d3rlpy stays fp32)")
    p.add_argument(
        "--device", default="cpu", help="device for flowrl's agents: cpu, cuda, cuda:N (d3rlpy's venv is CPU-only)"
    )
    p.add_argument("--out", default=None, help="keep run folders under this root (default: a deleted temp folder)")
    p.add_argument("--peer-timeout", type=float, default=None, help="seconds allowed per d3rlpy run (default: none)")
    p.add_argument("--json", default=None, help="write settings, per-run raw returns and the table here")
    p.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="train nothing: print one table from the --json files of earlier runs (e.g. seeds or algorithms "
        "run in separate processes); they must share steps, model and evaluation episodes",
    )


def run(args: argparse.Namespace) -> int:
    import torch
    from flowrl.envs import get_spec, load_dataset

    if args.merge:
        return _merge(args.merge, args.json)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    datasets = []  # first, so that a bad path fails before minutes of making d3rlpy's environment
    for path in args.datasets:
        ds = load_dataset(path)
        spec = get_spec(ds.env_name or path)
        if not spec.target_returns or not spec.has_reference:
            raise InputError(f"{path}: {spec.gym_id} has no D4RL target returns or reference scores")
        datasets.append({"path": str(path), "name": dataset_name(path), "data": ds, "spec": spec})

    if "flow-dt-staggered" in args.algos and "flow-dt" not in args.algos:
        raise InputError("--algos: flow-dt-staggered evaluates the flow-dt runs again; add flow-dt")
    args.algos = require_peer(args.algos)
    if not args.algos:
        print("flowrl bench scores: nothing left to run", file=sys.stderr)
        return 1
    warmup = dt_warmup(args.steps)
    peer_warmup = None
    if "d3rlpy" in args.algos:
        peer_warmup = warmup if peer_takes_warmup() else DT_WARMUP
    if peer_warmup not in (None, warmup):
        print(
            f"flowrl bench scores: warning: the d3rlpy runner has no --warmup-steps option, so d3rlpy keeps its "
            f"{DT_WARMUP}-step warmup (flowrl's DTs: {warmup})",
            file=sys.stderr,
        )

    result: dict[str, Any] = {
        "bench": "scores",
        "steps": args.steps,
        "warmup_steps": {"dt": warmup, "d3rlpy": peer_warmup, "bc": 0},
        "seeds": list(range(args.first_seed, args.first_seed + args.seeds)),
        "eval_episodes": args.eval_episodes,
        "algos": args.algos,
        "model": model_dict(args),
        "bc": _bc_config().to_dict(),
        "bf16": args.bf16,
        "device": args.device,
        "threads": threads,
        "machine": machine_text(threads),
        "datasets": [
            {
                "path": d["path"],
                "name": d["name"],
                "env": d["spec"].gym_id,
                "target_return": d["spec"].target_returns[0],
                "ref_min_score": d["spec"].ref_min_score,
                "ref_max_score": d["spec"].ref_max_score,
                "transitions": d["data"].num_transitions,
                "episodes": d["data"].num_episodes,
            }
            for d in datasets
        ],
        "runs": [],
    }
    print(
        f"flowrl bench scores: {len(datasets)} datasets x {len(args.algos)} algos x {args.seeds} seeds, "
        f"{args.steps} steps each (DT warmup {warmup}), {args.eval_episodes} eval episodes; {model_text(args)}",
        file=sys.stderr,
    )
    trained = [a for a in args.algos if a != "flow-dt-staggered"]
    total = len(datasets) * len(trained) * args.seeds
    with ExitStack() as stack:
        root = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flowrl-")))
        root = root.absolute()  # the d3rlpy runner works in a folder of its own
        hdf5 = {}
        if "d3rlpy" in args.algos:
            hdf5 = {d["path"]: stack.enter_context(d4rl_file(d["path"], d["data"])) for d in datasets}
        k = 0
        for seed in result["seeds"]:
            for d in datasets:
                for algo in trained:
                    k += 1
                    print(f"[{k}/{total}] {d['name']} {LABELS[algo]} seed {seed}: training", file=sys.stderr)
                    rec = _one_run(
                        algo,
                        d,
                        seed,
                        root / d["name"] / algo / f"seed{seed}",
                        hdf5.get(d["path"]),
                        args,
                        threads,
                        result["warmup_steps"],
                    )
                    extra = rec.pop("staggered", None)
                    print(f"[{k}/{total}] {run_text(rec)}", file=sys.stderr)
                    result["runs"].append(rec)
                    if extra is not None:
                        print(f"[{k}/{total}] {run_text(extra)}", file=sys.stderr)
                        result["runs"].append(extra)
                    if args.json:  # after every run, so that a long run stopped halfway keeps what it measured
                        _write_json(args.json, result)
    cells = summarize(result["runs"])
    result["table"] = cells
    print(f"\n{machine_text(threads)}")
    print(settings_text(result) + "\n")
    odd_warmup = None if peer_warmup in (None, warmup) else peer_warmup
    print(format_scores_table(cells, [d["name"] for d in datasets], args.algos, odd_warmup))
    print("\n" + TABLE_NOTE)
    if args.json:
        _write_json(args.json, result)
    return 0


TABLE_NOTE = (
    "D4RL-normalized score, mean over seeds ± std over seeds (one seed: std over its episodes); "
    "each run's score is the mean over its evaluation episodes."
)


def dt_warmup(steps: int) -> int:
    """Warmup for every DT: the recipe's 10k steps, but at most a tenth of the budget."""
    return min(DT_WARMUP, steps // 10)


def dataset_name(path: str | os.PathLike) -> str:
    p = Path(os.fspath(path))
    return p.stem if p.suffix.lower() in (".hdf5", ".h5", ".npz") else p.name


def summarize(runs: list[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{dataset: {algo: {"mean", "std", "n", "std_over"}}}`` from the runs that produced returns."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        if r.get("normalized"):
            groups.setdefault((r["dataset"], r["algo"]), []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (ds, algo), rs in groups.items():
        per_seed = np.array([r["score"] for r in rs])
        if len(rs) > 1:
            std, over = float(np.std(per_seed)), "seeds"
        else:
            std, over = float(np.std(rs[0]["normalized"])), "episodes"
        out.setdefault(ds, {})[algo] = {"mean": float(per_seed.mean()), "std": std, "n": len(rs), "std_over": over}
    return out


def format_scores_table(cells: dict, datasets: list[str], algos: list[str], peer_warmup: int | None = None) -> str:
    """Markdown table: a row per dataset, a column per algorithm, cells "mean ± std (n seeds)".

    ``peer_warmup``: d3rlpy's warmup steps when they differ from flowrl's DTs (shown in its column header).
    """
    from flowrl.scripts.report import table

    labels = dict(LABELS)
    if peer_warmup is not None:
        labels["d3rlpy"] = f"{LABELS['d3rlpy']} (warmup {peer_warmup})"

    rows = []
    for ds in datasets:
        row = [ds]
        for algo in algos:
            c = cells.get(ds, {}).get(algo)
            row.append("-" if c is None else f"{c['mean']:.1f} ± {c['std']:.1f} ({c['n']} seed{'s' * (c['n'] != 1)})")
        rows.append(row)
    return table(["dataset", *(labels[a] for a in algos)], rows)


def settings_text(result: dict) -> str:
    targets = ", ".join(sorted({f"{d['env']} {d['target_return']:g}" for d in result["datasets"]}))
    w = result["warmup_steps"]
    m = result["model"]
    peer = "" if w["d3rlpy"] in (None, w["dt"]) else f" (d3rlpy: its fixed {w['d3rlpy']})"
    return (
        f"{result['steps']} update steps per run, DTs (K={m['context']} dim={m['dim']} layers={m['layers']} "
        f"heads={m['heads']} batch={m['batch']}) warm up over {w['dt']} steps{peer}, BC "
        f"{result['bc']['layers']}x{result['bc']['hidden']} batch {result['bc']['batch_size']}; "
        f"{result['eval_episodes']} evaluation episodes per run at target returns {targets}"
        f"{'; flowrl in bf16' if result['bf16'] else ''}"
    )


def run_text(rec: dict) -> str:
    head = f"{rec['dataset']} {LABELS[rec['algo']]} seed {rec['seed']}"
    if "error" in rec:
        return f"{head}: failed, left out of the table: {rec['error'].splitlines()[0]}"
    rate = rec["steps"] / rec["train_seconds"] if rec["train_seconds"] > 0 else float("nan")
    return (
        f"{head}: {rec['steps']} steps in {rec['train_seconds']:.0f} s ({rate:.2f} steps/s), eval "
        f"{rec['eval_seconds']:.0f} s, return {np.mean(rec['returns']):.1f} ± {np.std(rec['returns']):.1f}, "
        f"normalized {rec['score']:.1f}"
    )


def _one_run(algo: str, d: dict, seed: int, run_dir: Path, hdf5: Path | None, args, threads: int, warmup: dict) -> dict:
    """Train and evaluate one (dataset, algo, seed); a failed d3rlpy run is recorded, not raised."""
    from flowrl.envs import normalized_score
    from flowrl.scripts.peers import PeerRunError

    head = {"dataset": d["name"], "algo": algo, "seed": seed}
    if algo == "d3rlpy":
        try:
            rec = _d3rlpy_run(hdf5, d["spec"], seed, run_dir, args, threads, warmup["d3rlpy"])
        except PeerRunError as e:  # keep the other runs' minutes
            return {**head, "error": str(e)}
    else:
        rec = _flowrl_run(algo, d["data"], d["spec"], seed, run_dir, args, warmup["dt"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other jobs slow every run: keep their load

    def scored(rec: dict) -> dict:
        normalized = np.atleast_1d(normalized_score(d["spec"], rec["returns"])).tolist()
        return {**rec, "normalized": normalized, "score": float(np.mean(normalized)), "loadavg_1m": load}

    out = scored({**head, **rec})
    if "staggered" in rec:
        out["staggered"] = scored({**head, **rec, **rec["staggered"], "algo": "flow-dt-staggered"})
        out["staggered"].pop("staggered")
    return out


# ---------------------------------------------------------------------------------------------- flowrl side
def _bc_config():
    from flowrl.agents import BCConfig

    return BCConfig()


def _flowrl_run(algo: str, ds, spec, seed: int, run_dir: Path, args, warmup: int) -> dict:
    from flowrl.agents import DecisionTransformerConfig, TrainConfig, fit, make_agent

    if algo == "bc":
        cfg = _bc_config()
    else:
        cfg = DecisionTransformerConfig(
            context=args.context,
            dim=args.dim,
            depth=args.layers,
            heads=args.heads,
            batch_size=args.batch,
            warmup_steps=warmup,
            attention="softmax" if algo == "softmax-dt" else "flow",
        )
    agent = make_agent(cfg, ds.obs_dim, ds.act_dim, seed=seed)
    tcfg = TrainConfig(
        steps=args.steps,
        eval_episodes=args.eval_episodes,
        num_envs=args.num_envs,
        target_returns=(spec.target_returns[0],),
        checkpoint_every=args.steps,
        keep_checkpoints=1,
        log_every=min(50, args.steps),
        seed=seed,
        device=args.device,
        bf16=args.bf16,
        threads=args.threads,
        extra={"dataset": str(ds.metadata.get("source", ""))},
    )
    res = fit(agent, ds, tcfg, run_dir, progress=False)
    ev = res["eval"][0]
    staggered = {}
    if algo == "flow-dt" and "flow-dt-staggered" in args.algos:
        staggered = {"staggered": _evaluate_staggered(agent, spec, args, tcfg)}
    return {
        **staggered,
        "steps": res["train"]["steps"],
        "warmup_steps": cfg.warmup_steps,
        "train_seconds": res["train"]["seconds"],
        "final_loss": res["train"]["final_loss"],
        "target_return": ev["target_return"],
        "returns": ev["returns"],
        "lengths": ev["lengths"],
        "eval_seconds": ev["seconds"],
    }


def _evaluate_staggered(agent, spec, args, tcfg) -> dict:
    """The trained flow-DT again, with the staggered rollout, on the same evaluation episodes."""
    import time

    from flowrl.envs import evaluate

    t0 = time.perf_counter()
    (ev,) = evaluate(
        agent.make_policy(rollout="staggered"),
        spec,
        episodes=args.eval_episodes,
        num_envs=args.num_envs,
        seed=tcfg.eval_seed,
        target_returns=(spec.target_returns[0],),
        progress=False,
    )
    return {
        "rollout": "staggered",
        "returns": [float(x) for x in ev.returns],
        "lengths": [int(x) for x in ev.lengths],
        "eval_seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------------------------- d3rlpy side
def _d3rlpy_run(hdf5: Path, spec, seed: int, run_dir: Path, args, threads: int, warmup: int) -> dict:
    from flowrl.scripts import peers

    run_dir.mkdir(parents=True, exist_ok=True)
    extra = {"warmup_steps": warmup} if warmup != DT_WARMUP else {}
    res = peers.run_d3rlpy(
        "scores",
        dataset=hdf5,
        steps=args.steps,
        env=spec.gym_id,
        target_return=[spec.target_returns[0]],
        episodes=args.eval_episodes,
        seed=seed,
        threads=threads,
        save_model=run_dir / "model.d3" if args.out else None,  # the temp root goes away anyway
        timeout=args.peer_timeout,
        **peer_model_kwargs(args),
        **extra,
    )
    (run_dir / "d3rlpy.json").write_text(json.dumps(res, indent=2) + "\n")
    ev = res["evaluations"][0]
    return {
        "steps": res["steps"],
        "warmup_steps": warmup,
        "train_seconds": res["train_seconds"],
        "final_loss": res["final_loss"],
        "target_return": ev["target_return"],
        "returns": [float(x) for x in ev["returns"]],
        "lengths": [int(x) for x in ev["lengths"]],
        "eval_seconds": ev["seconds"],
    }


def peer_takes_warmup() -> bool:
    """Whether the d3rlpy runner's ``scores`` command has a ``--warmup-steps`` option (read from its parser)."""
    import importlib.util

    from flowrl.scripts.peers.run import RUNNER

    spec = importlib.util.spec_from_file_location("_flowrl_d3rlpy_runner", RUNNER)
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports only the standard library at module level
    sub = next(a for a in module._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "--warmup-steps" in sub.choices["scores"]._option_string_actions


def _write_json(path: str, result: dict) -> None:
    from flowrl import atomic

    atomic.write_json(path, result)


MERGE_KEYS = ("steps", "model", "eval_episodes")
"""Settings every merged file must share (a table compares one budget, one model size, one evaluation)."""


def merge_results(results: list[dict], names: list[str]) -> dict:
    """One result from several ``--json`` results of ``bench scores`` (same budget and model; no run twice)."""
    first = results[0]
    for res, name in zip(results, names):
        if res.get("bench") != "scores" or not isinstance(res.get("runs"), list):
            raise InputError(f"--merge: {name} is not a `flowrl bench scores --json` file")
        for key in MERGE_KEYS:
            if res.get(key) != first.get(key):
                a, b = first.get(key), res.get(key)
                raise InputError(f"--merge: {key} differs between {names[0]} ({a}) and {name} ({b})")
    flowrl_files = [(res, name) for res, name in zip(results, names) if set(res.get("algos", [])) - {"d3rlpy"}]
    for res, name in flowrl_files[1:]:  # flowrl's precision is part of its recipe (d3rlpy is always fp32)
        if bool(res.get("bf16")) != bool(flowrl_files[0][0].get("bf16")):
            a, b = (("bf16" if r.get("bf16") else "fp32") for r in (flowrl_files[0][0], res))
            raise InputError(f"--merge: flowrl ran in {a} in {flowrl_files[0][1]} but in {b} in {name}")
    seen: dict[tuple, str] = {}
    runs, datasets = [], {}
    for res, name in zip(results, names):
        for r in res["runs"]:
            key = (r["dataset"], r["algo"], r["seed"])
            if key in seen:
                raise InputError(f"--merge: {key[0]} {key[1]} seed {key[2]} is in both {seen[key]} and {name}")
            seen[key] = name
            runs.append(r)
        for d in res.get("datasets", []):
            datasets.setdefault(d["name"], d)
    present = {r["algo"] for r in runs}
    warmup = dict(first["warmup_steps"])
    for res in results:
        if res["warmup_steps"].get("d3rlpy") is not None:
            warmup["d3rlpy"] = res["warmup_steps"]["d3rlpy"]
    return {
        **{k: first[k] for k in MERGE_KEYS},
        "bench": "scores",
        "merged_from": names,
        "warmup_steps": warmup,
        "seeds": sorted({r["seed"] for r in runs}),
        "algos": [a for a in ALGOS if a in present],
        "bc": first["bc"],
        "bf16": bool(flowrl_files and flowrl_files[0][0].get("bf16")),
        "machines": sorted({res.get("machine", "?") for res in results}),
        "datasets": list(datasets.values()),
        "runs": runs,
    }


def _merge(paths: list[str], json_out: str | None) -> int:
    results = []
    for path in paths:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"--merge: cannot read {path}: {e}") from None
    merged = merge_results(results, [str(p) for p in paths])
    cells = summarize(merged["runs"])
    merged["table"] = cells
    w = merged["warmup_steps"]
    odd_warmup = None if w.get("d3rlpy") in (None, w["dt"]) else w["d3rlpy"]
    print(settings_text(merged) + "\n")
    print(format_scores_table(cells, [d["name"] for d in merged["datasets"]], merged["algos"], odd_warmup))
    print("\n" + TABLE_NOTE)
    if json_out:
        _write_json(json_out, merged)
    return 0
