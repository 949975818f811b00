"""D4RL-style dataset levels and how ``flowrl collect`` picks the policy behind each one.

``medium`` and ``expert`` are checkpoints of one behaviour-policy run, chosen from their evaluated returns
(:func:`select_expert`, :func:`select_medium`); ``medium-replay`` is that run's replay buffer up to the medium
checkpoint, ``medium-expert`` the two policy levels one after the other, ``random`` uniform random actions.
"""

from __future__ import annotations

import numpy as np

from flowrl.errors import InputError

__all__ = [
    "LEVELS",
    "POLICY_LEVELS",
    "DEFAULT_TRANSITIONS",
    "EXPERT_RULES",
    "MEDIUM_RULES",
    "parse_levels",
    "select_expert",
    "select_medium",
]

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")
POLICY_LEVELS = ("medium", "expert")
DEFAULT_TRANSITIONS = 100_000

EXPERT_RULES = ("best", "final")
MEDIUM_RULES = ("closest", "first")


def select_expert(checkpoints: list[dict], rule: str = "best") -> dict:
    """The expert checkpoint: the best evaluated one (``best``, earliest on ties) or the last (``final``).

    ``best`` is the default because SAC's evaluated return swings by thousands between checkpoints (the
    Hopper run in the README scored 3236 at 210k steps and 980 at the end, 260k).
    """
    if not checkpoints:
        raise InputError("the run has no checkpoints to choose a policy from")
    if rule not in EXPERT_RULES:
        raise InputError(f"unknown expert rule {rule!r}; choose one of {', '.join(EXPERT_RULES)}")
    if rule == "final":
        return checkpoints[-1]
    return max(checkpoints, key=lambda c: c["eval_return_mean"])  # max keeps the first of equal ones


def select_medium(
    checkpoints: list[dict], fraction: float = 1 / 3, *, expert: dict | None = None, rule: str = "closest"
) -> dict:
    """The medium checkpoint: at ``fraction`` of the expert's evaluated return, among checkpoints up to it.

    ``first``: the first checkpoint whose return reaches the target (D4RL's "early-stopped at a third of
    expert"); ``closest``: the checkpoint whose return is nearest the target (earliest on ties), which a lucky
    early evaluation cannot push to near-expert level. ``expert`` defaults to :func:`select_expert` ``best``.
    Returns are shifted by the lowest evaluated return first (when negative), so the rule also works for envs
    with negative returns.
    """
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"medium fraction must be in (0, 1], got {fraction}")
    if rule not in MEDIUM_RULES:
        raise InputError(f"unknown medium rule {rule!r}; choose one of {', '.join(MEDIUM_RULES)}")
    expert = select_expert(checkpoints) if expert is None else expert
    cands = [c for c in checkpoints if c["step"] <= expert["step"]]
    rets = np.asarray([c["eval_return_mean"] for c in cands], dtype=np.float64)
    base = min(0.0, float(rets.min()))
    target = base + fraction * (expert["eval_return_mean"] - base)
    if rule == "closest":
        return cands[int(np.argmin(np.abs(rets - target)))]
    return next((c for c, r in zip(cands, rets) if r >= target), expert)


def parse_levels(levels) -> tuple[str, ...]:
    """``"random,medium"`` or a sequence -> validated tuple in canonical order; ``all`` means every level,
    ``none`` no level (train, and export a policy, only)."""
    items = [x.strip() for x in (levels.split(",") if isinstance(levels, str) else levels) if x.strip()]
    if items == ["all"]:
        return LEVELS
    if items == ["none"] or (not items and not isinstance(levels, str)):
        return ()
    bad = [x for x in items if x not in LEVELS]
    if bad or not items:
        raise InputError(f"unknown level {', '.join(map(repr, bad)) or '(none)'}; choose from {', '.join(LEVELS)}")
    return tuple(x for x in LEVELS if x in items)
