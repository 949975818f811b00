"""``flowrl bench NAME``: benchmarks that print tables. Each lives in ``flowrl.scripts.bench_NAME``.

A bench module exposes ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int | None``.
"""

from __future__ import annotations

import importlib
import importlib.util

BENCHES = ("attention", "data", "train", "rollout", "scores", "context", "seeds")


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="run a benchmark and print a table", description=__doc__)
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", parser_class=type(p))
    bsub.required = True
    for name in BENCHES:
        modname = f"flowrl.scripts.bench_{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        mod = importlib.import_module(modname)
        bp = bsub.add_parser(name, help=mod.HELP, description=mod.__doc__)
        mod.add_arguments(bp)
        bp.set_defaults(run=mod.run)
