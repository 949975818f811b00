"""Every example of the README and the docs runs as written, with ``FLOWRL_TINY=1`` (see flowrl/tiny.py).

One test per page, in a fresh folder that has ``../shared/datasets/`` holding tiny D4RL files named like the
real ones, and a Minari root holding a small built-in ``hopper-medium``. A renamed function or flag breaks
the test of the page that uses it. The benchmarks and memory pages hold benchmarks that take minutes even
when tiny: the fast suite runs their other lines and checks their ``flowrl`` commands against the parsers;
``-m slow`` runs them all.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from .examples import Block, Shell, blocks, run_python

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
SHARED = ("hopper-medium", "hopper-medium-replay", "halfcheetah-medium", "halfcheetah-medium-replay")
HEAVY = ("docs/benchmarks.md", "docs/memory.md")  # run in full only under -m slow; parsed in the fast suite


def _page_blocks() -> dict[str, list[Block]]:
    return {str(p.relative_to(REPO)): blocks(p, REPO) for p in PAGES}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """Tiny stand-ins for ../shared/datasets and a Minari root with the built-in hopper-medium (2,000 steps)."""
    from flowrl.envs import get_spec, write_d4rl_hdf5
    from flowrl.envs.collect import ensure_default_dataset
    from flowrl.envs.collect.recording import record

    root = tmp_path_factory.mktemp("examples")
    shared = root / "shared" / "datasets"
    shared.mkdir(parents=True)
    for name in SHARED:
        arr = record(get_spec(name.split("-")[0]), 300, None, seed=0, num_envs=3, progress=False)
        keys = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
        spec = get_spec(name.split("-")[0])
        meta = {"env_id": spec.gym_id, "ref_min_score": spec.ref_min_score, "ref_max_score": spec.ref_max_score}
        write_d4rl_hdf5(shared / f"{name}.hdf5", {k: arr[k] for k in keys}, metadata=meta, compression=None)
    minari = root / "minari"
    saved = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(minari)
    try:
        ensure_default_dataset("hopper-medium", progress=False, transitions=2000, num_envs=4)
    finally:
        if saved is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = saved
    return root


def _page_env(base: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FLOWRL_TINY="1",
        MINARI_DATASETS_PATH=str(base / "minari"),
        D4RL_DATASET_DIR=str(base / "d4rl"),
        FLOWRL_PEERS_DIR=str(base / "peers"),
        HF_HUB_OFFLINE="1",
        MPLBACKEND="Agg",
        PYTHONWARNINGS="ignore",
    )
    return env


def _runs(pages: list[str]) -> list:
    out = []
    for page in pages:
        if page in HEAVY:
            out.append(pytest.param(page, True, id=f"{page}-parsed"))
            out.append(pytest.param(page, False, id=page, marks=pytest.mark.slow))
        else:
            out.append(pytest.param(page, False, id=page))
    return out


@pytest.mark.parametrize(("page", "parse_only"), _runs(list(_page_blocks())))
def test_examples_run_as_written(page, parse_only, data_root, tmp_path):
    found = _page_blocks()[page]
    base = tmp_path
    shutil.copytree(data_root / "shared", base / "shared")
    shutil.copytree(data_root / "minari", base / "minari")
    work = base / "work"
    work.mkdir()
    env = _page_env(base)
    shell = Shell(work, env, parse_only=parse_only)
    namespace: dict = {"__name__": "__example__"}
    ran = 0
    for block in found:
        if block.skip:
            continue
        try:
            if block.lang == "python":
                run_python(block.code, namespace, work, env)
            else:
                shell.run_block(block.code)
        except BaseException as e:
            raise AssertionError(
                f"example at {block.where} failed: {type(e).__name__}: {e}\n(every example runs as written with "
                "FLOWRL_TINY=1, see tests/docs/examples.py; one that cannot run on a CPU-only machine without "
                "network gets `<!-- skip: reason -->` on the line before its fence)"
            ) from e
        ran += 1
    assert ran == sum(not b.skip for b in found)


def test_every_page_has_examples_and_every_skip_a_reason():
    found = _page_blocks()
    for page in ("README.md", "docs/getting-started.md", "docs/datasets.md", "docs/training.md"):
        assert any(not b.skip for b in found[page]), page
    skipped = [(b.where, b.skip) for bs in found.values() for b in bs if b.skip]
    assert all(reason and len(reason) > 10 for _, reason in skipped), skipped
    # the skips stay few: a block that can run on one CPU machine runs
    per_page = {page: sum(1 for b in bs if b.skip) for page, bs in found.items()}
    assert all(n <= 2 for n in per_page.values()), per_page


def test_the_runner_runs_what_it_is_given(tmp_path):
    """Guards the interpreter itself: a failing command fails, variables and here-documents work."""
    shell = Shell(tmp_path, dict(os.environ))
    shell.run_block("D=abc\ncat > f.txt <<'END'\n$D\nEND\necho hi > g.txt && cat g.txt  # comment\n")
    assert (tmp_path / "f.txt").read_text() == "$D\n" and (tmp_path / "g.txt").read_text() == "hi\n"
    with pytest.raises(AssertionError, match="exited with"):
        shell.run_block("flowrl train --attention linear")
    with pytest.raises(AssertionError, match="exited with"):
        shell.run_block("false")
    parsed = Shell(tmp_path, dict(os.environ), parse_only=True)
    parsed.run_block("flowrl bench train --steps 100 --repeats 5\npython -m flowrl.scripts.demo_charlm --threads 1")
    assert not (tmp_path / "runs").exists()  # parsed, not run
    for wrong in ("flowrl bench train --reps 5", "python -m flowrl.scripts.demo_charlm --nthreads 1"):
        with pytest.raises(AssertionError, match="exited with 2"):
            parsed.run_block(wrong)
    namespace: dict = {}
    run_python("x = np.arange(3).sum()", {"np": np, **namespace}, tmp_path, dict(os.environ))
