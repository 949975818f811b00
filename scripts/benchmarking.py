"""What the ``flowrl bench`` commands share: the DT size arguments and the config they make, the variant
subset option, the thread count, the rotating order of repeats, the machine line printed beside every table,
paired ratios, d3rlpy's availability and a D4RL file to hand it.

A library module: bench commands (``bench_<name>.py``) import from here, never from one another.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from flowrl.scripts.argtypes import positive_int, subset_of
from flowrl.scripts.report import table

from flowrl import tiny

__all__ = [
    "add_model_arguments",
    "add_network_arguments",
    "dt_config",
    "add_subset_argument",
    "set_threads",
    "rotated",
    "peer_model_kwargs",
    "model_dict",
    "model_text",
    "cpu_model",
    "machine_text",
    "print_report",
    "paired_ratio",
    "require_peer",
    "d4rl_file",
    "describe_dataset",
    "table",
]


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """``--context --dim --layers --heads --batch``: the DT's size, the same on flowrl's and d3rlpy's side."""
    p.add_argument("--context", type=positive_int, default=20, help="context length K (timesteps)")
    add_network_arguments(p)
    p.add_argument("--batch", type=positive_int, default=64, help="sequences per update")


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    """``--dim --layers --heads``: the network's shape (the DT's size apart from its context and batch)."""
    p.add_argument("--dim", type=positive_int, default=128, help="embedding width")
    p.add_argument("--layers", type=positive_int, default=3, help="transformer blocks")
    p.add_argument("--heads", type=positive_int, default=1, help="attention heads")


def dt_config(args: argparse.Namespace, attention: str, **fields: Any) -> Any:
    """flowrl's ``DecisionTransformerConfig`` at the size of :func:`add_model_arguments`' flags; ``fields`` set
    the rest (e.g. ``warmup_steps``)."""
    from flowrl.agents import DecisionTransformerConfig

    size = {
        "context": args.context,
        "dim": args.dim,
        "depth": args.layers,
        "heads": args.heads,
        "batch_size": args.batch,
    }
    return DecisionTransformerConfig(**size, attention=attention, **fields)


def add_subset_argument(
    p: argparse.ArgumentParser, flag: str, choices: Sequence[str], what: str, default: Sequence[str] | None = None
) -> None:
    """``flag``: a comma-separated subset of ``choices`` (``what`` names one in errors); default: all of them,
    or ``default`` (then named in the help)."""
    note = "" if default is None else f" (default: {','.join(default)})"
    p.add_argument(
        flag,
        type=subset_of(choices, what),
        default=list(choices if default is None else default),
        help=f"comma-separated subset of: {', '.join(choices)}{note}",
    )


def set_threads(requested: int) -> int:
    """Set torch's CPU thread count to ``requested`` (0: keep torch's default); returns the count in use."""
    import torch

    if requested:
        torch.set_num_threads(requested)
    return torch.get_num_threads()


_T = TypeVar("_T")


def rotated(variants: Sequence[_T], repeat: int) -> list[_T]:
    """The order of the variants in repeat ``repeat``: rotated by one place per repeat, so that load from other
    processes falls on all of them alike."""
    k = repeat % len(variants)
    return [*variants[k:], *variants[:k]]


def peer_model_kwargs(args: argparse.Namespace) -> dict[str, int]:
    """The model-size options of the d3rlpy runner, from :func:`add_model_arguments`' flags."""
    return {"context": args.context, "dim": args.dim, "layers": args.layers, "heads": args.heads, "batch": args.batch}


def model_dict(args: argparse.Namespace) -> dict[str, int]:
    """The model size as recorded in a bench's ``--json`` output."""
    return peer_model_kwargs(args)


def model_text(args: argparse.Namespace) -> str:
    return f"K={args.context} dim={args.dim} layers={args.layers} heads={args.heads} batch={args.batch}"


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform`` names elsewhere)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return cpu


def machine_text(threads: int) -> str:
    """One line for beside a table: CPU, cores, torch and Python versions, threads, 1-minute load."""
    import torch

    load = f", load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads, "
        f"python {platform.python_version()}{load}"
    )


def print_report(
    args: argparse.Namespace, threads: int, settings: str, table_text: str, record: dict[str, Any]
) -> None:
    """Print the machine line, the run's ``settings`` and its table; with ``--json``, also write ``record``
    there (atomically) with the model size, the thread count and the machine line."""
    from flowrl import atomic

    machine = machine_text(threads)
    print(f"\n{machine}")
    print(f"{settings}\n")
    print(table_text)
    if args.json:
        out = {**record, "model": model_dict(args), "threads": threads, "machine": machine}
        atomic.write_text(args.json, json.dumps(out, indent=2) + "\n")


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over repeats of numerator_i / denominator_i: each repeat's variants ran minutes apart at most,
    so the pairing cancels the machine's drift between repeats (which a ratio of two medians does not)."""
    return statistics.median(a / b for a, b in zip(numerators, denominators) if b > 0)


def require_peer(variants: list[str]) -> list[str]:
    """Make d3rlpy's environment now (before minutes of flowrl timing); without it, drop the d3rlpy row."""
    if "d3rlpy" not in variants:
        return variants
    if tiny.enabled():  # a tiny run never builds d3rlpy's environment (minutes, and the package index)
        print("flowrl bench: FLOWRL_TINY is set: the d3rlpy row is left out", file=sys.stderr)
        return [v for v in variants if v != "d3rlpy"]
    from flowrl.scripts.peers import PeerEnvError, ensure_d3rlpy_venv

    try:
        ensure_d3rlpy_venv()
    except PeerEnvError as e:
        first = str(e).splitlines()[0]
        print(f"flowrl bench: warning: d3rlpy is unavailable, its row is left out: {first}", file=sys.stderr)
        return [v for v in variants if v != "d3rlpy"]
    return variants


@contextmanager
def d4rl_file(spec: str | os.PathLike, ds) -> Iterator[Path]:
    """A D4RL-format HDF5 path holding ``ds``: ``spec`` itself when it is one, else a temporary copy."""
    path = Path(os.fspath(spec)).expanduser()
    if path.is_file() and path.suffix.lower() in (".hdf5", ".h5"):
        yield path.absolute()
        return
    from flowrl.envs import write_d4rl_hdf5

    with tempfile.TemporaryDirectory(prefix="flowrl-bench-") as tmp:
        yield write_d4rl_hdf5(Path(tmp) / "dataset.hdf5", ds, compression=None)


def describe_dataset(spec: str | os.PathLike, ds) -> str:
    return f"{Path(os.fspath(spec)).name} ({ds.num_transitions:,} transitions, {ds.num_episodes} episodes)"
