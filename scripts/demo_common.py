"""What the flow-vs-softmax demo scripts share: flags, trunk config, training loop, tables.

Used by ``demo_listops``, ``demo_timeseries``, ``demo_digits`` (classifiers: :func:`train_classifier`)
and ``demo_charlm`` (a language model: :func:`train_model`, with its own loss).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowrl import tiny
from flowrl.models import FlowformerConfig

Inputs = Mapping[str, Tensor]
"""Keyword arguments of one classifier forward call, e.g. ``{"x": x, "lengths": lengths}``."""


def demo_parser(
    name: str, doc: str, *, steps: int, batch_size: int, lr: float, dim: int = 64
) -> argparse.ArgumentParser:
    """The flags every demo has, with that demo's defaults; the demo adds its own flags after these."""
    p = argparse.ArgumentParser(prog=f"python -m flowrl.scripts.{name}", description=doc.split("\n")[0])
    p.add_argument("--attention", choices=("flow", "softmax", "both"), default="both")
    p.add_argument("--steps", type=int, default=steps, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--dim", type=int, default=dim)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    return p


def setup(args: argparse.Namespace) -> tuple[str, ...]:
    """Apply ``--threads``; the attention kinds that ``--attention`` asks to compare, in table order."""
    vars(args).update(vars(tiny.shrink(args)))  # FLOWRL_TINY=1: a few steps on a few examples (flowrl.tiny)
    if args.threads:
        torch.set_num_threads(args.threads)
    return ("flow", "softmax") if args.attention == "both" else (args.attention,)


def trunk_config(attention: str, args: argparse.Namespace, **overrides) -> FlowformerConfig:
    """The Flowformer trunk from ``--dim/--depth/--heads``, dropout 0.1; ``overrides`` e.g. ``causal=True``."""
    return FlowformerConfig(
        dim=args.dim, depth=args.depth, heads=args.heads, attention=attention, dropout=0.1, **overrides
    )


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_model(
    model: nn.Module,
    loss: Callable[[torch.Generator], Tensor],
    args: argparse.Namespace,
    *,
    weight_decay: float = 0.01,
    clip_norm: float | None = None,
    generator: torch.Generator | None = None,
) -> float:
    """``args.steps`` steps of AdamW at a one-cycle schedule (10% warm-up to ``args.lr``, cosine decay).

    ``loss(generator)`` draws one batch with ``generator`` (default: a new one seeded with ``args.seed``;
    pass your own to keep drawing from it afterwards) and returns its scalar loss. Gradients are clipped
    to a global norm of ``clip_norm`` when given. Returns the training wall time in seconds.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(args.steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed) if generator is None else generator
    start = time.perf_counter()
    model.train()
    for _ in range(args.steps):
        value = loss(gen)
        opt.zero_grad(set_to_none=True)
        value.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        sched.step()
    return time.perf_counter() - start


def train_classifier(
    model: nn.Module,
    batch: Callable[[Tensor], tuple[Inputs, Tensor]],
    train_size: int,
    test_inputs: Iterable[Inputs],
    test_labels: Tensor,
    args: argparse.Namespace,
    *,
    weight_decay: float = 0.01,
    clip_norm: float | None = None,
) -> dict:
    """Train with :func:`train_model` on cross-entropy, then measure test accuracy.

    batch(idx): training rows ``idx`` [B] (drawn uniformly with replacement, B = ``args.batch_size``)
    -> (model inputs, labels [B]). test_inputs: the test set as one or more consecutive chunks of model
    inputs, whose predictions concatenated line up with ``test_labels`` [N].
    Returns {"params", "train_s", "test_acc"}.
    """

    def loss(gen: torch.Generator) -> Tensor:
        inputs, labels = batch(torch.randint(0, train_size, (args.batch_size,), generator=gen))
        return F.cross_entropy(model(**inputs), labels)

    train_s = train_model(model, loss, args, weight_decay=weight_decay, clip_norm=clip_norm)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(**inputs).argmax(-1) for inputs in test_inputs])
    return {"params": num_params(model), "train_s": train_s, "test_acc": (pred == test_labels).float().mean().item()}


def classifier_columns(steps: int) -> list[tuple[str, str, str]]:
    """The table columns of the classifier demos, for :func:`print_table`."""
    return [
        ("attention", "attention", "s"),
        ("params", "params", ","),
        ("test_acc", "test accuracy", ".3f"),
        ("train_s", f"train time ({steps} steps) [s]", ".1f"),
    ]


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Markdown table; columns are (key, header, format spec)."""
    # Not report.table: that pads the cells to the column width, and these demos print tables unpadded
    # (their tests look for "| flow |").
    print("| " + " | ".join(h for _, h, _ in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(format(row[k], f) for k, _, f in columns) + " |")
