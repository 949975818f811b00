"""mkdocs hooks: the CLI reference, generated from the ``flowrl`` command's argparse parsers at build time,
the source tree the API reference is read from, and a navigation that holds every page.

The repository keeps ``envs/``, ``agents/`` and ``scripts/`` at its top level and installs them as
``flowrl.envs``, ``flowrl.agents`` and ``flowrl.scripts`` (``package_dir`` in setup.cfg). mkdocstrings reads
sources by their import path, so before the build a temporary folder gets a ``flowrl/`` made of links: the
backbone's files and the three installed subpackages.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

try:
    from mkdocs.plugins import event_priority
except ImportError:  # tests/test_quality.py imports installed_layout where mkdocs may be missing

    def event_priority(priority):
        return lambda f: f


REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = {"envs": "envs", "agents": "agents", "scripts": "scripts"}

MARKER = "<!-- flowrl-cli-reference -->"
# where a page that mkdocs.yml's nav does not name yet goes, after this section (titled by its first heading)
EXTRA_SECTION, AFTER_SECTION = "Features", "Guides"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _sections(parser: argparse.ArgumentParser, depth: int) -> list[str]:
    """One section per command, subcommands nested under it, each with its ``--help`` text."""
    out = [f"{'#' * min(depth, 6)} `{parser.prog}`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for child in _subparsers(parser).values():
        out += _sections(child, depth + 1)
    return out


def cli_reference() -> str:
    from flowrl.scripts.cli import build_parser

    parser = build_parser()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return "\n".join(_sections(parser, 2))


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (mkdocs hook signature)
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return markdown


def installed_layout(root: Path) -> Path:
    """``root/flowrl`` laid out as installed: links to the backbone's entries and to envs/, agents/, scripts/."""
    pkg = root / "flowrl"
    pkg.mkdir(parents=True)
    for entry in (REPO / "flowrl").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in SUBPACKAGES.items():
        (pkg / name).symlink_to(REPO / folder)
    return root


def _source_tree() -> Path:
    """A temporary folder holding ``flowrl/`` laid out as installed, removed when the build ends."""
    root = Path(tempfile.mkdtemp(prefix="flowrl-api-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return installed_layout(root)


def _named(nav) -> set[str]:
    """The page files a nav (mkdocs.yml's list of strings and one-key dicts) names."""
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, dict):
        return set().union(*(_named(v) for v in nav.values()))
    if isinstance(nav, list):
        return set().union(set(), *(_named(v) for v in nav))
    return set()


def _title(page: Path) -> str:
    for line in page.read_text().splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return page.stem.replace("-", " ").capitalize()


def complete_nav(nav: list, docs_dir: Path) -> list:
    """``nav`` with every top-level page of ``docs_dir`` that it does not name added to the Features section."""
    missing = sorted(p for p in docs_dir.glob("*.md") if p.name not in _named(nav))
    if not missing:
        return nav
    nav = list(nav)
    entries = [{_title(p): p.name} for p in missing]
    for i, item in enumerate(nav):
        if isinstance(item, dict) and EXTRA_SECTION in item:
            nav[i] = {EXTRA_SECTION: [*item[EXTRA_SECTION], *entries]}
            return nav
    keys = [next(iter(item)) if isinstance(item, dict) else None for item in nav]
    at = keys.index(AFTER_SECTION) + 1 if AFTER_SECTION in keys else len(nav)
    nav.insert(at, {EXTRA_SECTION: entries})
    return nav


@event_priority(100)  # before mkdocstrings reads its handler options
def on_config(config):
    handlers = config.plugins["mkdocstrings"].config.setdefault("handlers", {})
    handlers.setdefault("python", {})["paths"] = [str(_source_tree())]
    if config["nav"]:
        config["nav"] = complete_nav(config["nav"], Path(config["docs_dir"]))
    return config
