"""Learning curves over seeds: the mean and the spread (min..max) of S runs' loss and evaluation score."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flowrl.agents.learning_curve import save_figure

__all__ = ["curve_over_seeds", "plot_seed_curves", "plot_score_curves"]


def curve_over_seeds(steps: list[list[int]], values: list[list[float | None]]) -> tuple[np.ndarray, np.ndarray]:
    """The steps every seed logged and their values, [steps] and [seeds, steps] (float, NaN where missing)."""
    common = sorted(set(steps[0]).intersection(*map(set, steps[1:]))) if steps else []
    table = np.full((len(steps), len(common)), np.nan)
    for i, (st, vals) in enumerate(zip(steps, values)):
        at = {s: v for s, v in zip(st, vals)}
        table[i] = [np.nan if at[s] is None else at[s] for s in common]
    return np.asarray(common), table


def plot_seed_curves(histories: dict[int, dict[str, list]], path: str | os.PathLike, title: str = "") -> Path | None:
    """Two panels (training loss, evaluation score or return) with the mean over seeds and a min..max band;
    ``histories`` maps seed -> a trainer history ({"step", "loss", "eval_step", "eval_score", "eval_return"}).
    Written atomically; returns the path, or None without matplotlib or histories."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not histories:
        return None
    hs = list(histories.values())
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x, y = curve_over_seeds([h["step"] for h in hs], [h["loss"] for h in hs])
    _band(axes[0], x, y)
    axes[0].set(xlabel="update step", ylabel="action MSE", title="training loss", yscale="log")
    scored = all(h["eval_score"] and None not in h["eval_score"] for h in hs)
    key = "eval_score" if scored else "eval_return"
    x, y = curve_over_seeds([h["eval_step"] for h in hs], [h[key] for h in hs])
    _band(axes[1], x, y, marker="o")
    axes[1].set(
        xlabel="update step",
        ylabel="D4RL-normalized score" if scored else "return",
        title=f"evaluation (best target), {len(hs)} seeds",
    )
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_score_curves(runs: list[dict], datasets: list[str], path: str | os.PathLike, title: str = "") -> Path | None:
    """One panel per dataset: evaluation score against update steps, mean over seeds and a min..max band.

    ``runs``: records of one algorithm with ``dataset``, ``seed`` and ``curve`` ({"eval_step", "eval_score"}),
    as ``flowrl bench scores --json`` stores them. Returns the path, or None without matplotlib or curves.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [n for n in datasets if any(r["dataset"] == n and r.get("curve") for r in runs)]
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rs = [r for r in runs if r["dataset"] == name and r.get("curve")]
        x, y = curve_over_seeds([r["curve"]["eval_step"] for r in rs], [r["curve"]["eval_score"] for r in rs])
        _band(ax, x, y, marker="o", markersize=3)
        ax.set(xlabel="update step", ylabel="D4RL-normalized score", title=f"{name} ({len(rs)} seeds)")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(f"{title}: mean over seeds, band min..max")
    return save_figure(fig, path)


def _band(ax, x: np.ndarray, y: np.ndarray, **kw) -> None:
    if not len(x):
        return
    ax.plot(x, np.nanmean(y, 0), **kw)
    if len(y) > 1:
        ax.fill_between(x, np.nanmin(y, 0), np.nanmax(y, 0), alpha=0.25)
