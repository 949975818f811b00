"""``flowrl bench attention``: time and peak memory of Flow-Attention against softmax and the reference form.

For each length L (B=64 at L=60, a Decision-Transformer-like batch; B=1 otherwise; H=4, D=M=64) this
measures, forward (inference, no autograd graph) and forward+backward (``y.backward(g)``, input grads):

- ``flow causal``      :func:`flowrl.ops.flow_attention` with ``causal=True`` (scans + chunked linear attention)
- ``flow non-causal``  :func:`flowrl.ops.flow_attention` with ``causal=False``
- ``materialised``     :func:`flowrl.ops.naive.flow_attention_causal_materialized`, the Flowformer reference
                       code's causal form (a cumsum over a [B, H, L, D, M] tensor)
- ``sdpa causal``      ``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``

Time is the median over ``--repeats`` calls after warm-up calls (cases slower than ``--case-seconds`` in
all get fewer repeats, at least 3; the JSON records how many and the minimum). All methods of one
(L, mode) are timed in one fresh process, round-robin, so that they share the machine's load at the time:
on a machine shared with other jobs, pairing matters more than anything else. Peak memory is the resident-set high-water
mark (Linux ``VmHWM``) above the resting RSS, measured in a fresh subprocess per case: the process builds
its inputs, runs the case once to warm up (lazy kernel init, thread pools), resets the high-water mark
through ``/proc/self/clear_refs``, reads its resting RSS, runs the case once more, and reports
``VmHWM - VmRSS``. RSS sees every allocation (torch's CPU allocator, oneDNN scratch, autograd buffers),
which ``tracemalloc`` does not; the memory process runs with glibc's mmap threshold pinned low so that
freed tensors go back to the OS instead of hiding in malloc's free lists. Timing runs with the default
allocator, so timings are what a user sees.

The materialised form is skipped ("OOM-skip") where its estimated peak, five [B, H, L, D, M] tensors
for forward+backward and three for forward (measured: about 4.2 and 2.0), exceeds ``--mem-budget-gb``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from flowrl.errors import InputError

HELP = "time and peak memory of flow attention vs SDPA softmax and the materialised reference form"

METHODS = ("flow causal", "flow non-causal", "materialised", "sdpa causal")
MODES = ("fwd", "fwd+bwd")
DEFAULT_LENGTHS = (60, 256, 1024, 4096, 16384)
HEADS, DIM_QK, DIM_V = 4, 64, 64
SMALL_L, SMALL_B = 60, 64  # the Decision-Transformer-like case: short context, big batch

# Targets of issue 2 (2-core CPU), all on forward+backward of causal flow attention.
TARGETS = (
    # (L, against, kind, bound, text)
    (4096, "sdpa causal", "speedup", 2.0, ">= 2x faster than SDPA causal"),
    (4096, "materialised", "speedup", 20.0, ">= 20x faster than the materialised reference"),
    (4096, "materialised", "memory", 1 / 8, "<= 1/8 of the materialised reference's peak memory"),
    (16384, "sdpa causal", "speedup", 6.0, ">= 6x faster than SDPA causal"),
    (60, "sdpa causal", "within", 1.5, "within 1.5x of SDPA causal's time (B=64)"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--lengths",
        type=_int_list,
        default=list(DEFAULT_LENGTHS),
        help="comma-separated sequence lengths (B=64 at L=60, else B=1); default %(default)s",
    )
    p.add_argument(
        "--methods", type=_method_list, default=list(METHODS), help=f"comma-separated subset of: {', '.join(METHODS)}"
    )
    p.add_argument("--repeats", type=int, default=15, help="timed calls per case (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="input dtype")
    p.add_argument(
        "--mem-budget-gb",
        type=float,
        default=8.0,
        help="skip the materialised form where its estimated peak exceeds this",
    )
    p.add_argument(
        "--case-seconds",
        type=float,
        default=60.0,
        help="time budget per timed case: slow cases get fewer repeats (never fewer than 3)",
    )
    p.add_argument(
        "--omp-wait-policy",
        choices=("passive", "active", "inherit"),
        default="passive",
        help="OMP_WAIT_POLICY of the worker processes (default passive: on a machine shared with "
        "other jobs, spinning OpenMP workers measure the scheduler, not the op; 'inherit' "
        "leaves the environment alone)",
    )
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes (faster)")
    p.add_argument("--json", metavar="PATH", help="also write every measurement to this JSON file")


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        raise InputError("--repeats and --threads must be >= 1 and --warmup >= 0")
    machine = _machine(args.threads)
    load0 = os.getloadavg()
    print(
        f"# flowrl bench attention: H={HEADS}, D=M={DIM_QK}, {args.dtype}, {args.threads} threads, "
        f"OMP_WAIT_POLICY={args.omp_wait_policy}; {machine}; load average {_load(load0)}",
        flush=True,
    )
    rows = []
    for L in args.lengths:
        B = SMALL_B if L == SMALL_L else 1
        by_method = {m: {"L": L, "B": B, "method": m} for m in args.methods}
        for mode in MODES:
            case = {
                "L": L,
                "B": B,
                "mode": mode,
                "dtype": args.dtype,
                "threads": args.threads,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "budget": args.case_seconds,
                "omp": args.omp_wait_policy,
            }
            runnable = []
            for m in args.methods:
                if m == "materialised" and _materialised_estimate(case) > args.mem_budget_gb * 2**30:
                    by_method[m][mode] = {"skipped": "OOM-skip"}
                else:
                    runnable.append(m)
            # All methods of one (L, mode) are timed in one process, round-robin, so that they see the
            # same machine load; a crash (out of memory) falls back to one process per method.
            timed = _spawn(dict(case, methods=runnable, measure="time")) if runnable else {}
            for m in runnable:
                res = timed.get(m) or _spawn(dict(case, methods=[m], measure="time")).get(m, {"error": "no result"})
                if "error" not in res and not args.no_memory:
                    res.update(_spawn(dict(case, methods=[m], measure="memory", warmup=1)).get(m, {}))
                by_method[m][mode] = res
        for m, row in by_method.items():
            rows.append(row)
            print(f"  L={L:>6} B={B:>3} {m:<16} " + "  ".join(_brief(row[x], x) for x in MODES), flush=True)
    load1 = os.getloadavg()
    print(f"\n# load average (1, 5, 15 min) at start {_load(load0)}, at end {_load(load1)}")
    print()
    print(format_table(rows))
    print()
    verdicts = check_targets(rows)
    for line in verdicts:
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": machine,
                    "dtype": args.dtype,
                    "threads": args.threads,
                    "heads": HEADS,
                    "omp_wait_policy": args.omp_wait_policy,
                    "loadavg_start": load0,
                    "loadavg_end": load1,
                    "dim_qk": DIM_QK,
                    "dim_v": DIM_V,
                    "repeats": args.repeats,
                    "rows": rows,
                    "targets": verdicts,
                },
                f,
                indent=2,
            )
    return 0


# ---------------------------------------------------------------------------------------------- table


def format_table(rows: list[dict]) -> str:
    """Markdown table; speedups are SDPA time / method time and materialised time / method time."""
    head = (
        "| L | B | method | fwd ms | fwd+bwd ms | fwd peak MiB | fwd+bwd peak MiB "
        "| fwd+bwd speedup vs SDPA | fwd+bwd speedup vs materialised | fwd+bwd peak vs materialised |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    by_key = {(r["L"], r["method"]): r for r in rows}
    for r in rows:
        sd = by_key.get((r["L"], "sdpa causal"), {}).get("fwd+bwd", {})
        ma = by_key.get((r["L"], "materialised"), {}).get("fwd+bwd", {})
        fb = r["fwd+bwd"]
        lines.append(
            "| "
            + " | ".join(
                [
                    str(r["L"]),
                    str(r["B"]),
                    r["method"],
                    _cell(r["fwd"], "ms"),
                    _cell(fb, "ms"),
                    _cell(r["fwd"], "peak_mib"),
                    _cell(fb, "peak_mib"),
                    _ratio(sd.get("ms"), fb.get("ms"), r["method"] == "sdpa causal"),
                    _ratio(ma.get("ms"), fb.get("ms"), r["method"] == "materialised", ma.get("skipped")),
                    _ratio(
                        fb.get("peak_mib"),
                        ma.get("peak_mib"),
                        r["method"] == "materialised",
                        ma.get("skipped"),
                        mem=True,
                    ),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def check_targets(rows: list[dict]) -> list[str]:
    by_key = {(r["L"], r["method"]): r["fwd+bwd"] for r in rows}
    out = []
    for L, other, kind, bound, text in TARGETS:
        mine, ref = by_key.get((L, "flow causal"), {}), by_key.get((L, other), {})
        key = "peak_mib" if kind == "memory" else "ms"
        if key not in mine or key not in ref:
            out.append(f"target L={L}: causal flow fwd+bwd {text}: not measured")
            continue
        if kind == "speedup":
            value = ref[key] / mine[key]
            ok, shown = value >= bound, f"{value:.2f}x faster"
        elif kind == "within":
            value = mine[key] / ref[key]
            ok, shown = value <= bound, f"{value:.2f}x its time"
        else:
            value = mine[key] / ref[key]
            ok, shown = value <= bound, f"{value:.3f} of its peak (1/{1 / value:.0f})"
        out.append(f"target L={L}: causal flow fwd+bwd {text}: {shown} -> {'MET' if ok else 'NOT MET'}")
    return out


def _cell(res: dict, key: str) -> str:
    if "skipped" in res:
        return res["skipped"]
    if "error" in res:
        return "error"
    if key not in res:
        return "-"
    x = res[key]
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _ratio(num, den, is_self: bool, skipped: str | None = None, mem: bool = False) -> str:
    if is_self:
        return "1"
    if skipped:
        return "n/a (ref skipped)"
    if num is None or den is None or den <= 0:
        return "-"
    r = num / den
    if mem:
        return f"{r:.3f}" if r >= 0.001 else f"{r:.1e}"
    return f"{r:.2f}x"


def _brief(res: dict, mode: str) -> str:
    if "skipped" in res or "error" in res:
        return f"{mode}: {res.get('skipped') or 'error: ' + res['error']}"
    mem = f", {res['peak_mib']:.1f} MiB" if "peak_mib" in res else ""
    return f"{mode}: {res['ms']:.2f} ms{mem}"


def _load(x) -> str:
    return "/".join(f"{v:.1f}" for v in x)


def _int_list(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"lengths must be positive integers, got {s!r}")
    return out


def _method_list(s: str) -> list[str]:
    out = [x.strip() for x in s.split(",") if x.strip()]
    unknown = [x for x in out if x not in METHODS]
    if unknown or not out:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return out


def _materialised_estimate(case: dict) -> float:
    """Bytes the materialised form is expected to need: [B, H, L, D, M] tensors alive at once."""
    elt = 2 if case["dtype"] == "bfloat16" else 4
    n_live = 5 if case["mode"] == "fwd+bwd" else 3
    return n_live * case["B"] * HEADS * case["L"] * DIM_QK * DIM_V * elt


def _machine(threads: int) -> str:
    import torch
    from flowrl.scripts.benchmarking import cpu_model

    return (
        f"{cpu_model()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, python {platform.python_version()}"
    )


# ---------------------------------------------------------------------------------------------- worker


def _spawn(case: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(case["threads"]), MKL_NUM_THREADS=str(case["threads"]))
    if case["omp"] != "inherit":
        env["OMP_WAIT_POLICY"] = case["omp"].upper()
    if case["measure"] == "memory":
        # Freed blocks >= 64 KiB go straight back to the OS, so the resting RSS holds no stale free lists.
        env.update(MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    proc = subprocess.run(
        [sys.executable, "-m", "flowrl.scripts.bench_attention", "--worker", json.dumps(case)],
        capture_output=True,
        text=True,
        env=env,
    )
    last = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    if proc.returncode != 0 or not last:
        err = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        if proc.returncode < 0:
            err = f"killed by signal {-proc.returncode} (out of memory?)"
        if len(case["methods"]) > 1:
            return {}  # the caller retries one method at a time
        return {case["methods"][0]: {"error": err}}
    return json.loads(last[0])


def _make_case(case: dict, method: str):
    """Inputs and a zero-argument callable running ``method`` once on them."""
    import torch
    import torch.nn.functional as F

    from flowrl.ops import flow_attention
    from flowrl.ops.naive import flow_attention_causal_materialized

    torch.manual_seed(0)
    dtype = getattr(torch, case["dtype"])
    B, L = case["B"], case["L"]
    backward = case["mode"] == "fwd+bwd"
    q, k = (torch.randn(B, HEADS, L, DIM_QK, dtype=dtype, requires_grad=backward) for _ in range(2))
    v = torch.randn(B, HEADS, L, DIM_V, dtype=dtype, requires_grad=backward)
    g = torch.randn(B, HEADS, L, DIM_V, dtype=dtype)
    fn = {
        "flow causal": lambda: flow_attention(q, k, v, causal=True),
        "flow non-causal": lambda: flow_attention(q, k, v, causal=False),
        "materialised": lambda: flow_attention_causal_materialized(q, k, v),
        "sdpa causal": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }[method]

    if not backward:

        def forward_step():
            with torch.no_grad():
                fn()

        return forward_step

    def step():
        for x in (q, k, v):
            x.grad = None
        fn().backward(g)

    return step


def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _worker(case: dict) -> dict:
    import gc

    import torch

    torch.set_num_threads(case["threads"])
    methods = case["methods"]
    steps = {m: _make_case(case, m) for m in methods}
    repeats = {}
    for m in methods:
        for _ in range(max(case["warmup"], 1)):
            t0 = time.perf_counter()
            steps[m]()
            t_call = time.perf_counter() - t0
            if t_call > case["budget"] / 20:  # slow: one warm-up call is enough
                break
        repeats[m] = case["repeats"]
        if t_call * case["repeats"] > case["budget"]:  # a slow case: fewer repeats, never fewer than 3
            repeats[m] = max(3, min(case["repeats"], int(case["budget"] / max(t_call, 1e-9))))
    if case["measure"] == "memory":
        (m,) = methods
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        rest = _proc_status()["VmRSS"]
        steps[m]()
        return {m: {"peak_mib": (_proc_status()["VmHWM"] - rest) / 2**20}}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for r in range(max(repeats.values())):
        for m in methods if r % 2 == 0 else methods[::-1]:  # round-robin, alternating direction
            if r < repeats[m]:
                t0 = time.perf_counter()
                steps[m]()
                times[m].append(time.perf_counter() - t0)
    return {
        m: {"ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts), "repeats": len(ts)} for m, ts in times.items()
    }


def _main_worker(argv: list[str]) -> None:
    if len(argv) != 2 or argv[0] != "--worker":
        raise SystemExit("usage: python -m flowrl.scripts.bench_attention --worker CASE_JSON (internal)")
    print(json.dumps(_worker(json.loads(argv[1]))))


if __name__ == "__main__":
    _main_worker(sys.argv[1:])
