"""Tables from ``flowrl bench scores`` records: per-cell mean ± standard error over seeds, the Markdown score
table, one-line run and settings summaries, and merging the ``--json`` files of separate runs."""

from __future__ import annotations

from typing import Any

import numpy as np

from flowrl.errors import InputError

__all__ = [
    "ALGOS",
    "LABELS",
    "TABLE_NOTE",
    "summarize",
    "format_scores_table",
    "settings_text",
    "run_text",
    "merge_results",
    "MERGE_KEYS",
]

ALGOS = ("flow-dt", "flow-dt-staggered", "softmax-dt", "bc", "d3rlpy")
LABELS = {
    "flow-dt": "flowrl flow-DT",
    "flow-dt-staggered": "flowrl flow-DT (staggered rollout)",
    "softmax-dt": "flowrl softmax-DT",
    "bc": "flowrl BC",
    "d3rlpy": "d3rlpy DT",
}
TABLE_NOTE = (
    "D4RL-normalized score, mean over seeds ± standard error over seeds (one seed: std over its episodes); "
    "each run's score is the mean over its evaluation episodes."
)


def summarize(runs: list[dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """``{dataset: {algo: {"mean", "se", "std", "n", "std_over", "scores"}}}`` from the runs that produced
    returns: the mean over seeds, its standard error and the standard deviation over seeds (ddof 1), every
    seed's score; with one seed, ``se`` and ``std`` are the standard deviation over its episodes."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in runs:
        if r.get("normalized"):
            groups.setdefault((r["dataset"], r["algo"]), []).append(r)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for (ds, algo), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        per_seed = np.array([r["score"] for r in rs])
        if len(rs) > 1:
            std, over = float(np.std(per_seed, ddof=1)), "seeds"
            se = std / float(np.sqrt(len(rs)))
        else:
            std = se = float(np.std(rs[0]["normalized"]))
            over = "episodes"
        out.setdefault(ds, {})[algo] = {
            "mean": float(per_seed.mean()),
            "se": se,
            "std": std,
            "n": len(rs),
            "std_over": over,
            "scores": {str(r["seed"]): float(r["score"]) for r in rs},
        }
    return out


def format_scores_table(cells: dict, datasets: list[str], algos: list[str], peer_warmup: int | None = None) -> str:
    """Markdown table: a row per dataset, a column per algorithm, cells "mean ± standard error (n seeds)".

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
            row.append("-" if c is None else f"{c['mean']:.1f} ± {c['se']:.1f} ({c['n']} seed{'s' * (c['n'] != 1)})")
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
    batched = rec.get("seeds_batched", 1)
    head = f"{rec['dataset']} {LABELS[rec['algo']]} seed {rec['seed']}" + (
        f" (of {batched} batched)" if batched > 1 else ""
    )
    if "error" in rec:
        return f"{head}: failed, left out of the table: {rec['error'].splitlines()[0]}"
    rate = rec["steps"] / rec["train_seconds"] if rec["train_seconds"] > 0 else float("nan")
    return (
        f"{head}: {rec['steps']} steps in {rec['train_seconds']:.0f} s ({rate:.2f} steps/s), eval "
        f"{rec['eval_seconds']:.0f} s, return {np.mean(rec['returns']):.1f} ± {np.std(rec['returns']):.1f}, "
        f"normalized {rec['score']:.1f}"
    )


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
    runs: list[dict[str, Any]] = []
    datasets: dict[str, dict[str, Any]] = {}
    for res, name in zip(results, names):
        for r in res["runs"]:
            run = (r["dataset"], r["algo"], r["seed"])
            if run in seen:
                raise InputError(f"--merge: {run[0]} {run[1]} seed {run[2]} is in both {seen[run]} and {name}")
            seen[run] = name
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
