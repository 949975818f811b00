"""The ``flowrl`` command: ``flowrl {train,evaluate,collect,datasets,bench} ...``.

Each subcommand lives in its own module of this package and exposes ``add_parser(subparsers)``, which
registers its parser and sets ``run=callable(args) -> int | None`` as a default. Modules import their
heavy dependencies inside ``run`` so that ``flowrl --help`` stays fast.

Exit codes (every error is one line on stderr, without a traceback):

- 0: done.
- 2: bad input: a :class:`flowrl.errors.InputError` (a bad flag, config value, dataset, checkpoint, policy
  file, environment name, a missing file the user named, an output that exists). The line names the
  problem and the fix; nothing was written or removed.
- 1: anything else. A :class:`flowrl.errors.RunError` (a run that stopped for a reason it states, e.g.
  training diverged) and an ``OSError`` from the system (no space left on the device, permission
  denied) are reported as such; any other exception is a bug in flowrl, reported with a hint to report it.
  ``FLOWRL_TRACEBACK=1`` prints the full traceback instead.
- 130: interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import traceback

from flowrl.scripts.argtypes import UsageError

from flowrl import tiny
from flowrl.errors import InputError, RunError

__all__ = ["UsageError", "main", "build_parser"]

COMMANDS = ("train", "evaluate", "collect", "datasets", "bench")
TRACEBACK_ENV = "FLOWRL_TRACEBACK"


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
    args = tiny.shrink(parser.parse_args(argv))  # FLOWRL_TINY=1: every budget a few steps (flowrl.tiny)
    from flowrl.runtime import tune_allocator

    tune_allocator()  # fewer page faults in the per-step tensor churn (see flowrl.runtime)
    try:
        code = args.run(args)
    except KeyboardInterrupt:
        print(f"flowrl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        return report_error(f"flowrl {args.command}", e)
    return int(code or 0)


def report_error(prog: str, e: BaseException) -> int:
    """Print ``e`` as one line on stderr and return the exit code (see the module doc)."""
    if isinstance(e, InputError):
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
        traceback.print_exception(e)
        return 1
    if isinstance(e, RunError):
        print(f"{prog}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    if isinstance(e, OSError) and e.strerror:
        where = f": {e.filename}" if e.filename else ""
        print(f"{prog}: error: {e.strerror}{where} (set {TRACEBACK_ENV}=1 for details)", file=sys.stderr)
        return 1
    if isinstance(e, OSError):
        print(f"{prog}: error: {_one_line(e)} (set {TRACEBACK_ENV}=1 for details)", file=sys.stderr)
        return 1
    print(
        f"{prog}: internal error: {type(e).__name__}: {_one_line(e)} (a bug in flowrl: please report it with "
        f"the traceback that {TRACEBACK_ENV}=1 prints)",
        file=sys.stderr,
    )
    return 1


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
