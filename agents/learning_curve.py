"""The learning-curve figure of a training run (loss and evaluation scores against update steps), and how
flowrl writes a figure: atomically, as a PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flowrl import atomic

__all__ = ["plot_learning_curve", "save_figure"]


def plot_learning_curve(history: dict[str, list[Any]], path: str | os.PathLike) -> None:
    """Write a PNG of ``history`` (a trainer's: step, loss, eval_step, eval_score, eval_return) to ``path``
    atomically; nothing without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    h = history
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].plot(h["step"], h["loss"])
    axes[0].set(xlabel="update step", ylabel="action MSE", title="training loss", yscale="log")
    scores = [s for s in h["eval_score"] if s is not None]
    if scores and len(scores) == len(h["eval_step"]):
        axes[1].plot(h["eval_step"], scores, marker="o")
        axes[1].set(ylabel="D4RL-normalized score")
    else:
        axes[1].plot(h["eval_step"], h["eval_return"], marker="o")
        axes[1].set(ylabel="return")
    axes[1].set(xlabel="update step", title="evaluation (best target)")
    save_figure(fig, path)


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Lay out the matplotlib figure ``fig``, write it to ``path`` as a PNG atomically and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    try:
        with atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return Path(path)
