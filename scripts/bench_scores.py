"""``flowrl bench scores``: D4RL-normalized scores of flowrl flow-DT, softmax-DT, BC and d3rlpy's DT, side by side.

Every algorithm trains on each dataset for the same number of update steps, with each seed, and is then
evaluated in the dataset's environment. flowrl's agents train all seeds of a (dataset, algorithm) as one
seed-batched run (:func:`flowrl.agents.fit_seeds`: seed s is the model ``fit`` with seed s trains, the S seeds
stacked into one model and evaluated together); d3rlpy trains one seed per process:

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
is the mean over its evaluation episodes; a table cell is the mean over seeds ± its standard error
(std over seeds / sqrt(seeds); with one seed: the standard deviation over that seed's episodes).
``--eval-every`` adds learning curves (flowrl's agents), ``--curves DIR`` plots them per algorithm.

Episode ``i`` starts from ``reset(seed=10_000 + i)`` for
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
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from flowrl.scripts.argtypes import positive_int
from flowrl.scripts.benchmarking import (
    add_model_arguments,
    add_subset_argument,
    d4rl_file,
    dt_config,
    machine_text,
    model_dict,
    model_text,
    peer_model_kwargs,
    require_peer,
    set_threads,
)
from flowrl.scripts.score_table import (
    ALGOS,
    LABELS,
    TABLE_NOTE,
    format_scores_table,
    merge_results,
    run_text,
    settings_text,
    summarize,
)

from flowrl.errors import InputError

if TYPE_CHECKING:
    from flowrl.envs import EnvSpec, TrajectoryDataset

HELP = "D4RL-normalized scores: flow-DT, softmax-DT, BC and d3rlpy's DT on the shared datasets, same step budget"

DEFAULT_ALGOS = ("flow-dt", "softmax-dt", "bc", "d3rlpy")
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
    add_subset_argument(p, "--algos", ALGOS, "algo", default=DEFAULT_ALGOS)
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
    p.add_argument(
        "--eval-every",
        type=int,
        default=0,
        help="flowrl's agents: also evaluate every this many updates, for learning curves (default: only at the end)",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=0,
        help="flowrl's agents: checkpoint every this many updates, so --resume loses little (default: at the end)",
    )
    p.add_argument("--out", default=None, help="keep run folders under this root (default: a deleted temp folder)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --out: continue flowrl's seed-batched runs from their checkpoints instead of starting over",
    )
    p.add_argument(
        "--curves",
        default=None,
        metavar="DIR",
        help="write learning curves here, one PNG per algorithm (mean and min..max over seeds; needs --eval-every)",
    )
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


class _Dataset(TypedDict):
    """One benchmarked dataset: the path as given, its short name, the data and its environment's spec."""

    path: str
    name: str
    data: TrajectoryDataset
    spec: EnvSpec


def run(args: argparse.Namespace) -> int:
    from flowrl.envs import get_spec, load_dataset

    if args.merge:
        return _merge(args.merge, args.json, args.curves)
    threads = set_threads(args.threads)
    datasets: list[_Dataset] = []  # first, so that a bad path fails before minutes of making d3rlpy's environment
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
    jobs = [(d, algo) for d in datasets for algo in trained]  # flowrl: one seed-batched run per job
    total = sum(args.seeds if algo == "d3rlpy" else 1 for _, algo in jobs)
    if args.resume and not args.out:
        raise InputError("--resume continues the run folders under --out; give --out")
    with ExitStack() as stack:
        root = Path(args.out) if args.out else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flowrl-")))
        root = root.absolute()  # the d3rlpy runner works in a folder of its own
        hdf5 = {}
        if "d3rlpy" in args.algos:
            hdf5 = {d["path"]: stack.enter_context(d4rl_file(d["path"], d["data"])) for d in datasets}
        k = 0
        for d, algo in jobs:
            if algo == "d3rlpy":
                batches = [[seed] for seed in result["seeds"]]
            else:
                batches = [result["seeds"]]
            for seeds in batches:
                k += 1
                what = f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]} (one batched run)"
                print(f"[{k}/{total}] {d['name']} {LABELS[algo]} {what}: training", file=sys.stderr)
                if algo == "d3rlpy":
                    run_dir = root / d["name"] / algo / f"seed{seeds[0]}"
                    warm = result["warmup_steps"]["d3rlpy"]
                    recs = [_peer_run(d, seeds[0], run_dir, hdf5[d["path"]], args, threads, warm)]
                else:
                    recs = _flowrl_runs(algo, d, seeds, root / d["name"] / algo, args, result["warmup_steps"]["dt"])
                for rec in recs:
                    print(f"[{k}/{total}] {run_text(rec)}", file=sys.stderr)
                    result["runs"].append(rec)
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
    if args.curves:
        _write_curves(result, args.curves)
    return 0


def dt_warmup(steps: int) -> int:
    """Warmup for every DT: the recipe's 10k steps, but at most a tenth of the budget."""
    return min(DT_WARMUP, steps // 10)


def dataset_name(path: str | os.PathLike) -> str:
    p = Path(os.fspath(path))
    return p.stem if p.suffix.lower() in (".hdf5", ".h5", ".npz") else p.name


def _peer_run(d: _Dataset, seed: int, run_dir: Path, hdf5: Path, args, threads: int, warmup: int) -> dict:
    """Train and evaluate d3rlpy's DT for one (dataset, seed); a failed run is recorded, not raised."""
    from flowrl.envs import normalized_score
    from flowrl.scripts.peers import PeerRunError

    head = {"dataset": d["name"], "algo": "d3rlpy", "seed": seed}
    try:
        rec = _d3rlpy_run(hdf5, d["spec"], seed, run_dir, args, threads, warmup)
    except PeerRunError as e:  # keep the other runs' minutes
        return {**head, "error": str(e)}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other jobs slow every run: keep their load
    normalized = np.atleast_1d(normalized_score(d["spec"], rec["returns"])).tolist()
    return {**head, **rec, "normalized": normalized, "score": float(np.mean(normalized)), "loadavg_1m": load}


# ---------------------------------------------------------------------------------------------- flowrl side
def _bc_config():
    from flowrl.agents import BCConfig

    return BCConfig()


def _flowrl_runs(algo: str, d: _Dataset, seeds: list[int], run_dir: Path, args, warmup: int) -> list[dict]:
    """Train and evaluate every seed of (dataset, algo) as one seed-batched run; one record per seed (and per
    seed of the staggered re-evaluation when asked for)."""
    from flowrl.agents import TrainConfig
    from flowrl.agents.seed_training import SEEDS_FILE, fit_seeds
    from flowrl.envs import normalized_score

    ds, spec = d["data"], d["spec"]
    if algo == "bc":
        cfg = _bc_config()
    else:
        cfg = dt_config(args, "softmax" if algo == "softmax-dt" else "flow", warmup_steps=warmup)
    tcfg = TrainConfig(
        steps=args.steps,
        eval_every=args.eval_every,
        eval_episodes=args.eval_episodes,
        num_envs=args.num_envs,
        target_returns=(spec.target_returns[0],),
        checkpoint_every=args.checkpoint_every or args.steps,
        keep_checkpoints=1,
        log_every=min(50, args.steps),
        device=args.device,
        bf16=args.bf16,
        threads=args.threads,
        extra={"dataset": str(ds.metadata.get("source", ""))},
    )
    resume = bool(args.resume and (run_dir / SEEDS_FILE).is_file())
    res = fit_seeds(cfg, ds, tcfg, seeds, run_dir, resume=resume, progress=False, env_name=ds.env_name)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other jobs slow every run: keep their load
    recs = []
    for seed in seeds:
        head = {"dataset": d["name"], "algo": algo, "seed": seed, "seeds_batched": len(seeds)}
        if seed in res["stopped"]:
            recs.append({**head, "error": res["stopped"][seed]["reason"]})
            continue
        r = res["per_seed"][seed]
        ev, h = r["eval"][0], r["history"]
        normalized = np.atleast_1d(normalized_score(spec, ev["returns"])).tolist()
        recs.append(
            {
                **head,
                "steps": r["train"]["steps"],
                "warmup_steps": cfg.warmup_steps,
                "train_seconds": r["train"]["seconds"],
                "final_loss": r["train"]["final_loss"],
                "target_return": ev["target_return"],
                "returns": [float(x) for x in ev["returns"]],
                "lengths": [int(x) for x in ev["lengths"]],
                "eval_seconds": ev["seconds"],
                "normalized": normalized,
                "score": float(np.mean(normalized)),
                "loadavg_1m": load,
                "curve": {k: h[k] for k in ("step", "loss", "eval_step", "eval_score", "eval_return")},
            }
        )
    if algo == "flow-dt" and "flow-dt-staggered" in args.algos:
        recs += _evaluate_staggered(recs, run_dir, spec, args, tcfg, load)
    return recs


def _evaluate_staggered(recs: list[dict], run_dir: Path, spec, args, tcfg, load) -> list[dict]:
    """The trained flow-DT seeds again, with the staggered rollout, on the same evaluation episodes."""
    import time

    from flowrl.agents import load_agent
    from flowrl.agents.seed_policy import SplitPolicy
    from flowrl.agents.seed_training import seed_dir
    from flowrl.envs import evaluate_groups, normalized_score

    done = [r for r in recs if "error" not in r]
    if not done:
        return []
    agents = [load_agent(seed_dir(run_dir, r["seed"]), device=args.device) for r in done]
    t0 = time.perf_counter()
    groups = evaluate_groups(
        SplitPolicy([a.make_policy(rollout="staggered") for a in agents]),
        spec,
        len(agents),
        episodes=args.eval_episodes,
        num_envs=args.num_envs,
        seed=tcfg.eval_seed,
        target_returns=(spec.target_returns[0],),
        progress=False,
    )
    seconds = time.perf_counter() - t0
    out = []
    for r, (ev,) in zip(done, groups):
        normalized = np.atleast_1d(normalized_score(spec, ev.returns)).tolist()
        out.append(
            {
                **{k: v for k, v in r.items() if k != "curve"},
                "algo": "flow-dt-staggered",
                "rollout": "staggered",
                "returns": [float(x) for x in ev.returns],
                "lengths": [int(x) for x in ev.lengths],
                "eval_seconds": seconds,
                "normalized": normalized,
                "score": float(np.mean(normalized)),
                "loadavg_1m": load,
            }
        )
    return out


def _write_curves(result: dict, folder: str | os.PathLike) -> None:
    from flowrl.agents.seed_plots import plot_score_curves

    Path(folder).mkdir(parents=True, exist_ok=True)
    names = [d["name"] for d in result["datasets"]]
    for algo in result["algos"]:
        runs = [r for r in result["runs"] if r["algo"] == algo and r.get("curve")]
        if runs:
            path = plot_score_curves(runs, names, Path(folder) / f"curves-{algo}.png", title=LABELS[algo])
            if path is not None:
                print(f"learning curves: {path}", file=sys.stderr)


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


def _merge(paths: list[str], json_out: str | None, curves: str | None = None) -> int:
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
    if curves:
        _write_curves(merged, curves)
    return 0
