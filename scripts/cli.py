"""The ``flowrl`` command: ``flowrl {train,evaluate,collect,datasets,bench} ...``.

Each subcommand lives in its own module of this package and exposes ``add_parser(subparsers)``, which
registers its parser and sets ``run=callable(args) -> int | None`` as a default. Modules import their
heavy dependencies inside ``run`` so that ``flowrl --help`` stays fast.

Exit codes: 0 ok, 2 usage or input error (one line on stderr, no traceback), 1 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

__all__ = ["UsageError", "main", "build_parser"]

COMMANDS = ("train", "evaluate", "collect", "datasets", "bench")
# Errors that mean "the input is wrong", not "flowrl is broken": reported in one line with exit code 2.
INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


class UsageError(Exception):
    """Bad command-line input; the message says what is wrong and how to fix it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flowrl", description="Offline RL with Flow-Attention Decision Transformers.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        modname = f"flowrl.scripts.{name}"
        if importlib.util.find_spec(modname) is not None:
            importlib.import_module(modname).add_parser(sub)
    return parser


def _version() -> str:
    from flowrl import __version__

    return f"flowrl {__version__}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from flowrl.runtime import tune_allocator

    tune_allocator()  # fewer page faults in the per-step tensor churn (see flowrl.runtime)
    try:
        code = args.run(args)
    except KeyboardInterrupt:
        print(f"flowrl {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, *INPUT_ERRORS) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"flowrl {args.command}: error: {msg}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
