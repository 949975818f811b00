"""Plain-text tables for the CLI (markdown pipe tables, so they paste into READMEs as they are)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["table", "eval_table"]


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells[1:]]
    )


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"
    return str(x)


def eval_table(results: Sequence[dict[str, Any]]) -> str:
    """One row per target return: raw and D4RL-normalized return (mean ± std), the success rate (where the
    environment reports success), episode length."""
    with_success = any(r.get("success_rate") is not None for r in results)
    rows = []
    for r in results:
        norm = "-" if r.get("normalized_mean") is None else f"{r['normalized_mean']:.1f} ± {r['normalized_std']:.1f}"
        rate = r.get("success_rate")
        rows.append(
            [
                "-" if r["target_return"] is None else f"{r['target_return']:g}",
                r["episodes"],
                f"{r['return_mean']:.1f} ± {r['return_std']:.1f}",
                norm,
                *([("-" if rate is None else f"{100 * rate:.0f}%")] if with_success else []),
                f"{r['length_mean']:.0f}",
                f"{r['seconds']:.1f}",
            ]
        )
    headers = ["target return", "episodes", "return", "normalized score", "success", "length", "seconds"]
    return table([h for h in headers if with_success or h != "success"], rows)
