"""The documentation site builds with ``mkdocs build --strict``, and its generated pages hold what they claim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    for module in ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python"):
        pytest.importorskip(module, reason=f"{module} is not installed (the test extra: pip install -e '.[test]')")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out), "--config-file", "mkdocs.yml"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return out


def _text(page: Path) -> str:
    return re.sub(r"<[^>]+>", "", page.read_text())


def test_cli_reference_is_every_parser(site):
    from flowrl.scripts.bench import BENCHES
    from flowrl.scripts.cli import COMMANDS

    text = _text(site / "cli" / "index.html")
    for command in COMMANDS:
        assert f"usage: flowrl {command}" in text, command
    for bench in BENCHES:
        assert f"usage: flowrl bench {bench}" in text, bench
    assert "--eval-rollout" in text and "--from-policy" in text  # flags, with their help


def test_api_reference_is_read_from_the_docstrings(site):
    from flowrl.envs import load_dataset

    text = " ".join(_text(site / "api" / "index.html").split())
    first_line = load_dataset.__doc__.splitlines()[0]
    assert "flowrl.envs.load_dataset" in text and first_line[:60] in text
    assert "collect( cfg: CollectConfig" in text and "BehaviorTrainingConfig" in text


def _complete_nav():
    sys.path.insert(0, str(REPO / "docs"))
    try:
        from hooks import complete_nav
    finally:
        sys.path.remove(str(REPO / "docs"))
    return complete_nav


def test_every_page_is_in_the_navigation(site):
    """Every page is built and linked from the front page's navigation, named in mkdocs.yml or not."""
    front = (site / "index.html").read_text()
    for page in sorted(p.name for p in (REPO / "docs").glob("*.md")):
        if page != "index.md":
            name = page[: -len(".md")] + "/"
            assert (site / name / "index.html").is_file() and f'href="{name}"' in front, page


def test_a_page_missing_from_mkdocs_yml_joins_the_features_section(tmp_path):
    complete_nav = _complete_nav()
    (tmp_path / "a.md").write_text("# A\n")
    (tmp_path / "extra-thing.md").write_text("text\n\n# Extra thing\n")
    nav = [{"Home": "index.md"}, {"Guides": [{"A": "a.md"}]}, {"Design": "design.md"}]
    done = complete_nav(nav, tmp_path)
    extra = {"Features": [{"Extra thing": "extra-thing.md"}]}
    assert done == [nav[0], nav[1], extra, nav[2]] and complete_nav(done, tmp_path) == done
    assert complete_nav([*nav, {"Features": []}], tmp_path) == [*nav, extra]
