"""The prepared device check: on a machine with a CUDA GPU and nothing but the project (no network), run the
GPU tests and benches and write their tables to one folder, in under 8 minutes.

    python -m flowrl.scripts.device_check --out device-check/

Steps, each with its own time limit (a step that runs over is stopped and reported, the others still run):

1. ``env.md``: GPU name, driver, CUDA and torch versions, Triton version, CPU (every table is read beside it).
2. ``pytest.txt``: ``pytest -m gpu`` (the CUDA tests: the Triton kernels against the float64 references).
3. ``attention.md``: causal attention forward+backward, milliseconds (median of timed calls, CUDA events):
   flow (Triton chunk kernels), flow (torch operators) and SDPA causal (FlashAttention where torch has it)
   at L = 1024, 4096, 16384 with B=4, H=4, D=64, bfloat16.
4. ``train.md``: ``flowrl bench train --device cuda`` (flow-DT fp32 and bf16, softmax-DT) on ``--dataset`` or,
   without one, a synthetic D4RL file written to the folder. d3rlpy's row is left out: its peer environment is
   built from the package index, which the device machine cannot reach.

``summary.md`` lists each step's status and time. Without CUDA the script stops at once with one line (exit 2);
``--device cpu --quick`` runs the same steps at toy sizes on a CPU (what the test suite checks).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

BUDGET_S = 460  # all steps together: under 8 minutes with start-up


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="device_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for the tables (created; must be empty if it exists)")
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu with --quick")
    p.add_argument("--dataset", default=None, help="D4RL .hdf5 for bench train (default: a synthetic one)")
    p.add_argument("--quick", action="store_true", help="toy sizes (a smoke run of every step)")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: pytest, attention, train")
    return p


# ------------------------------------------------------------------------------------------------- tables
def markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def environment(device) -> list[list[str]]:
    import torch

    rows = [["torch", torch.__version__], ["python", platform.python_version()], ["cpu", _cpu_model()]]
    try:
        import triton

        rows.append(["triton", triton.__version__])
    except ImportError:
        rows.append(["triton", "not installed"])
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rows += [
            ["gpu", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs"],
            ["cuda (torch build)", str(torch.version.cuda)],
            ["driver", _driver()],
            ["bf16 supported", str(torch.cuda.is_bf16_supported())],
        ]
    return rows


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


# --------------------------------------------------------------------------------------------- attention
def _timer(device):
    import torch

    if device.type == "cuda":

        def run(fn, repeats: int) -> list[float]:
            times = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                times.append(start.elapsed_time(end))
            return times

        return run

    def run_cpu(fn, repeats: int) -> list[float]:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times

    return run_cpu


def attention_rows(device, lengths, B=4, H=4, D=64, dtype_name="bfloat16", repeats=10) -> list[dict]:
    """Forward+backward milliseconds of each method at each length (None where it failed, e.g. out of memory)."""
    import torch
    import torch.nn.functional as F

    from flowrl.ops import flow_attention
    from flowrl.ops.flow import ops

    dtype = getattr(torch, dtype_name)
    fast = "triton" if device.type == "cuda" else "native"
    methods = {
        f"flow ({fast})": lambda q, k, v: _with(ops.implementation(fast), flow_attention, q, k, v),
        "flow (torch operators)": lambda q, k, v: _with(ops.implementation("torch"), flow_attention, q, k, v),
        "softmax SDPA causal": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
    }
    timer = _timer(device)
    rows = []
    for L in lengths:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(B, H, L, D, device=device, dtype=dtype, generator=g).requires_grad_() for _ in "qkv")
        gy = torch.randn(B, H, L, D, device=device, dtype=dtype, generator=g)
        for name, method in methods.items():

            def step(method=method, q=q, k=k, v=v, gy=gy):
                y = method(q, k, v)
                torch.autograd.grad(y, (q, k, v), gy)

            try:
                timer(step, 2)  # compile / warm up
                ms = statistics.median(timer(step, repeats))
            except (RuntimeError, torch.OutOfMemoryError) as e:
                ms, note = None, str(e).splitlines()[0][:80]
            else:
                note = ""
            rows.append({"L": L, "method": name, "ms": ms, "note": note})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


def _with(ctx, fn, q, k, v):
    with ctx:
        return fn(q, k, v, causal=True)


def attention_table(rows: list[dict]) -> str:
    body = []
    for r in rows:
        sdpa = next(x["ms"] for x in rows if x["L"] == r["L"] and x["method"].startswith("softmax"))
        ratio = f"{sdpa / r['ms']:.2f}x" if r["ms"] and sdpa else "-"
        ms = f"{r['ms']:.3f}" if r["ms"] is not None else f"failed: {r['note']}"
        body.append([str(r["L"]), r["method"], ms, ratio])
    return markdown(["L", "method", "fwd+bwd ms (median)", "speed vs SDPA"], body)


# -------------------------------------------------------------------------------------------------- train
def synthetic_dataset(path: Path, transitions: int, obs_dim=11, act_dim=3, episode=1000, seed=0) -> Path:
    """A D4RL-format file of random transitions in episodes of ``episode`` steps (speed runs need no real data)."""
    import numpy as np
    from flowrl.envs.io_d4rl import write_d4rl_hdf5

    rng = np.random.default_rng(seed)
    timeouts = np.zeros(transitions, dtype=bool)
    timeouts[episode - 1 :: episode] = True
    timeouts[-1] = True
    arrays = {
        "observations": rng.standard_normal((transitions, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, (transitions, act_dim)).astype(np.float32),
        "rewards": rng.uniform(0, 1, transitions).astype(np.float32),
        "terminals": np.zeros(transitions, dtype=bool),
        "timeouts": timeouts,
    }
    return write_d4rl_hdf5(path, arrays, compression=None)


def train_command(device: str, dataset: Path, quick: bool, json_path: Path) -> list[str]:
    steps, warmup, repeats = ("5", "2", "1") if quick else ("200", "50", "3")
    return [
        sys.executable,
        "-m",
        "flowrl.scripts",
        "bench",
        "train",
        "--device",
        device,
        "--dataset",
        str(dataset),
        "--variants",
        "flow,flow-bf16,softmax",
        "--steps",
        steps,
        "--warmup",
        warmup,
        "--repeats",
        repeats,
        "--json",
        str(json_path),
    ] + (["--dim", "16", "--layers", "1", "--batch", "4", "--context", "5"] if quick else [])


# --------------------------------------------------------------------------------------------------- main
def _run(cmd: list[str], log: Path, timeout: float) -> tuple[str, float]:
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n\n")
        f.flush()
        try:
            code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=max(timeout, 1)).returncode
            status = "ok" if code == 0 else f"exit {code}"
        except subprocess.TimeoutExpired:
            status = f"stopped after {timeout:.0f} s"
    return status, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prog = "device_check"

    from flowrl.agents import pick_device

    from flowrl.errors import InputError

    try:
        device = pick_device(args.device)
    except InputError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if device.type != "cuda" and not args.quick:
        print(f"{prog}: error: --device {args.device} is not a GPU; use --device cuda (or --quick)", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"{prog}: error: --out {out} exists and is not an empty folder; name a new one", file=sys.stderr)
        return 2
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - {"pytest", "attention", "train"}
    if unknown:
        print(
            f"{prog}: error: --skip: unknown step(s) {sorted(unknown)}; use pytest, attention, train", file=sys.stderr
        )
        return 2
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.perf_counter() + BUDGET_S
    left = lambda: deadline - time.perf_counter()  # noqa: E731
    summary: list[list[str]] = []
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())

    (out / "env.md").write_text(f"# Device check, {stamp}\n\n" + markdown(["what", "value"], environment(device)))
    summary.append(["env", "ok", "0", "env.md"])

    repo = Path(__file__).resolve().parents[1]
    if "pytest" not in skip:
        tests = repo / "tests"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(tests)]
        status, secs = _run(cmd, out / "pytest.txt", min(150, left() - 240))
        summary.append(["pytest -m gpu", status, f"{secs:.0f}", "pytest.txt"])

    if "attention" not in skip:
        t0 = time.perf_counter()
        lengths = [64, 128] if args.quick else [1024, 4096, 16384]
        dims = {"B": 1, "H": 1, "D": 16, "repeats": 2} if args.quick else {}
        try:
            rows = attention_rows(device, lengths, **dims)
            (out / "attention.md").write_text(
                f"# Causal attention forward+backward, {stamp}\n\nB={dims.get('B', 4)}, H={dims.get('H', 4)}, "
                f"D={dims.get('D', 64)}, bfloat16, median of {dims.get('repeats', 10)} timed calls; see env.md\n\n"
                + attention_table(rows)
            )
            (out / "attention.json").write_text(json.dumps(rows, indent=1))
            status = "ok"
        except Exception as e:  # noqa: BLE001 - reported in the summary, the other steps still run
            status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
        summary.append(["attention", status, f"{time.perf_counter() - t0:.0f}", "attention.md"])

    if "train" not in skip:
        dataset = Path(args.dataset) if args.dataset else None
        if dataset is None:
            dataset = synthetic_dataset(out / "synthetic-d4rl.hdf5", 2000 if args.quick else 100_000)
        cmd = train_command(args.device, dataset, args.quick, out / "train.json")
        status, secs = _run(cmd, out / "train.md", left() - 5)
        summary.append(["bench train", status, f"{secs:.0f}", "train.md"])

    (out / "summary.md").write_text(
        f"# Device check, {stamp}\n\n" + markdown(["step", "status", "seconds", "file"], summary)
    )
    print((out / "summary.md").read_text())
    return 0 if all(r[1] == "ok" for r in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
