"""Turn config dataclasses into argparse flags: one flag per field, its attribute docstring as the help.

Flags default to None (= "not given"), so a caller can layer: dataclass defaults < preset < config file
< explicit flags. Booleans get ``--flag/--no-flag``; tuples take several values.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any

__all__ = ["field_docs", "add_dataclass_arguments", "given_values"]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field of a dataclass (``x: int = 1`` then ``\"\"\"doc\"\"\"``), by name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp: Any) -> tuple[type, bool]:
    """(element type, is_tuple) for the annotations configs use: int, float, str, bool, tuple[float, ...]."""
    origin = typing.get_origin(tp)
    if origin is tuple:
        return typing.get_args(tp)[0], True
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _base_type(args[0])
    return tp, False


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | Any, cls: type, *, skip: tuple[str, ...] = (), seen: set[str] | None = None
) -> list[str]:
    """Add ``--field-name`` for each field of ``cls`` not in ``skip`` or ``seen``; returns the field names added."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    added = []
    for f in dataclasses.fields(cls):
        if f.name in skip or (seen is not None and f.name in seen) or not f.init:
            continue
        tp, is_tuple = _base_type(hints[f.name])
        if tp not in (int, float, str, bool):
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = docs.get(f.name, "")
        if default is not None and not is_tuple:
            help_text += f" (default: {default})"
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif is_tuple:
            parser.add_argument(
                flag, dest=f.name, type=tp, nargs="+", default=None, metavar=f.name.upper(), help=help_text
            )
        else:
            parser.add_argument(flag, dest=f.name, type=tp, default=None, metavar=f.name.upper(), help=help_text)
        added.append(f.name)
        if seen is not None:
            seen.add(f.name)
    return added


def given_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of ``cls`` that were given on the command line (not None)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out
