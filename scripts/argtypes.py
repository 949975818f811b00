"""What the ``flowrl`` subcommands share for reading their arguments: argparse value types (errors surface as
one-line usage errors) and :class:`UsageError`, raised for input a parser cannot catch on its own."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from flowrl.errors import InputError

__all__ = ["UsageError", "positive_int", "subset_of"]


class UsageError(InputError):
    """Bad command-line input; the message says what is wrong and how to fix it (exit code 2)."""


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def subset_of(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """A comma-separated, de-duplicated, non-empty subset of ``choices`` (``what`` names them in errors)."""

    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {bad or text!r}; choose from {', '.join(choices)}")
        return list(dict.fromkeys(items))

    return parse
