"""The layout rules of DESIGN.md that a reader of one file cannot see: which module may import which."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
# Modules of flowrl.scripts that are libraries for the commands; every other module is a command (a `flowrl`
# subcommand, a bench, a demo) or the dispatcher, and no module imports a command as a library.
SCRIPT_LIBRARIES = {"argtypes", "benchmarking", "dataclass_args", "demo_common", "peers", "report", "score_table"}


def _imported_script_modules(path: Path) -> set[str]:
    """The ``flowrl.scripts.X`` modules that ``path`` imports statically (X = the first component)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[:2] == ["flowrl", "scripts"] and len(parts) > 2:
                found.add(parts[2])
    return found


@pytest.mark.parametrize("path", sorted(SCRIPTS.glob("*.py")), ids=lambda p: p.name)
def test_no_command_module_imports_another_as_a_library(path):
    allowed = SCRIPT_LIBRARIES | ({"cli"} if path.name == "__main__.py" else set())
    commands = _imported_script_modules(path) - allowed - {path.stem}
    assert not commands, f"{path.name} imports command module(s) {sorted(commands)}; move what it needs to a library"


def test_the_import_scan_sees_both_import_forms(tmp_path):
    # guards the scan itself: a rule over an empty set of imports would pass whatever the code did
    assert "benchmarking" in _imported_script_modules(SCRIPTS / "bench_rollout.py")
    probe = tmp_path / "probe.py"
    probe.write_text("from flowrl.scripts import bench_train\nimport flowrl.scripts.train as t\n")
    assert _imported_script_modules(probe) == {"bench_train", "train"}
