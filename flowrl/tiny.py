"""``FLOWRL_TINY=1``: every budget shrinks to a few steps, to check a script or a command end to end in seconds.

The library and the ``flowrl`` command call :func:`shrink` on what sets a budget (the training config, a
command's parsed flags, an evaluation's episode count); with the variable unset it returns its argument
unchanged. The test suite runs every example of the README and the docs this way, as written. The numbers a
tiny run prints mean nothing; what it writes goes where the full run would write it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any, TypeVar

__all__ = ["ENV", "enabled", "shrink", "cap"]

ENV = "FLOWRL_TINY"

# budget-setting names (dataclass fields or argparse destinations) -> their tiny value; a value is only
# ever lowered, and 0/None ("no limit" or "the default") becomes the tiny value where it is a limit
CAPS: dict[str, int] = {
    "steps": 4,  # training updates (flowrl train, fit, bench steps, collect's SB3 steps, demo steps)
    "eval_every": 2,
    "checkpoint_every": 2,
    "log_every": 2,
    "episodes": 2,
    "eval_episodes": 2,
    "ref_episodes": 2,
    "num_envs": 2,
    "max_episode_steps": 20,
    "transitions": 400,
    "repeats": 1,
    "warmup": 1,
    "seeds": 1,
    "train_size": 64,
    "test_size": 32,
    "synthetic_size": 32,
    "new_tokens": 4,
    "prompt_len": 24,
    "transformer_steps": 20,
}
# limits where 0 or None means "unlimited" or "the default": tiny makes them tiny too
UNBOUNDED_MEANS_CAP = {"max_episode_steps"}
# list-valued budgets: keep the first entries
LISTS = {"lengths": 1, "decode_lengths": 2}
# flags that switch off a costly optional pass
SWITCHES = {"no_memory": True}

T = TypeVar("T")


def enabled() -> bool:
    """Whether ``FLOWRL_TINY`` is set to something other than empty or ``0``."""
    return os.environ.get(ENV, "").strip() not in ("", "0")


def cap(name: str, value: Any) -> Any:
    """``value`` of the budget ``name``, lowered to its tiny value when ``FLOWRL_TINY`` is set."""
    if not enabled():
        return value
    if name in LISTS and isinstance(value, (list, tuple)):
        return type(value)(sorted(value)[: LISTS[name]])
    if name in SWITCHES:
        return SWITCHES[name]
    if name not in CAPS or isinstance(value, bool):
        return value
    if value in (None, 0):
        return CAPS[name] if name in UNBOUNDED_MEANS_CAP else value
    if isinstance(value, int):
        return min(value, CAPS[name])
    return value


def shrink(obj: T) -> T:
    """A copy of a config dataclass or an argparse namespace with every known budget capped (see module)."""
    if not enabled():
        return obj
    if isinstance(obj, argparse.Namespace):
        values = {k: cap(k, v) for k, v in vars(obj).items()}
        return argparse.Namespace(**values)  # type: ignore[return-value]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        names = {f.name for f in dataclasses.fields(obj) if f.init}
        changed = {k: cap(k, getattr(obj, k)) for k in names if k in CAPS or k in LISTS or k in SWITCHES}
        return dataclasses.replace(obj, **changed)
    return obj
