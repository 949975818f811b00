"""flowrl.atomic: complete-or-absent files and folders, umask modes, temporaries cleaned by name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from flowrl import atomic


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _mode(p) -> int:
    return p.stat().st_mode & 0o777


def test_files_and_folders_round_trip_with_umask_modes(tmp_path, umask_027):
    atomic.write_text(tmp_path / "a.txt", "héllo\n")
    atomic.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic.write_json(tmp_path / "c.json", {"x": [1, 2.5]})
    with atomic.atomic_path(tmp_path / "d.npz", suffix=".npz") as tmp:
        assert tmp.name.endswith(".npz") and tmp.name.startswith(".d.npz.tmp-")
        tmp.write_bytes(b"zip")
    with atomic.atomic_dir(tmp_path / "e") as tmp:
        (tmp / "inner.pt").write_bytes(b"w")
    assert (tmp_path / "a.txt").read_text() == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2.5]}
    assert (tmp_path / "d.npz").read_bytes() == b"zip" and (tmp_path / "e" / "inner.pt").read_bytes() == b"w"
    for name in ("a.txt", "b.bin", "c.json", "d.npz", "e/inner.pt"):
        assert _mode(tmp_path / name) == 0o640, name  # 0666 & ~027, not mkstemp's 0600
    assert _mode(tmp_path / "e") == 0o750  # 0777 & ~027, not mkdtemp's 0700
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "c.json", "d.npz", "e"]


def test_a_failed_write_keeps_the_old_content_and_leaves_nothing(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_dir(tmp_path / "d", replace=True) as tmp:
            (tmp / "new").write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["keep"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "d"]


def test_folders_are_replaced_only_when_asked(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "old").write_text("x")
    with pytest.raises(FileExistsError):
        with atomic.atomic_dir(tmp_path / "d"):
            pass
    with atomic.atomic_dir(tmp_path / "d", replace=True) as tmp:
        (tmp / "new").write_text("y")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic.write_json(tmp_path / "r.json", {"loss": float("nan")})
    assert not list(tmp_path.iterdir())


def test_a_temp_is_never_written_through_a_planted_link(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: "0" * (2 * n))
    (tmp_path / f".a.txt.tmp-{os.getpid()}-00000000").symlink_to(victim)
    with pytest.raises(FileExistsError):
        atomic.write_text(tmp_path / "a.txt", "new")
    assert victim.read_text() == "precious"


def test_killed_writer_leaves_a_temp_that_is_recognised_and_removed(tmp_path):
    """kill -9 in the middle of a write: the target is untouched; the temp carries the dead pid."""
    atomic.write_text(tmp_path / "a.txt", "old")
    script = textwrap.dedent(
        f"""
        import sys, time
        from flowrl import atomic
        with atomic.atomic_dir({str(tmp_path / "ckpt")!r}) as tmp:
            (tmp / "model.pt").write_bytes(b"x" * 1000)
            with atomic.atomic_path({str(tmp_path / "a.txt")!r}) as t2:
                t2.write_text("half")
                print("ready", flush=True)
                time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    names = sorted(p.name for p in tmp_path.iterdir())
    temps = [n for n in names if atomic.is_temp_name(n)]
    assert len(temps) == 2 and all(f"-{proc.pid}-" in n for n in temps)
    assert (tmp_path / "a.txt").read_text() == "old" and not (tmp_path / "ckpt").exists()
    # a live writer's temp is kept; a dead writer's is removed
    live = tmp_path / f".b.txt.tmp-{os.getppid()}-abcdef01"
    live.write_text("")
    removed = atomic.remove_stale_temps(tmp_path)
    assert sorted(p.name for p in removed) == temps
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.txt", live.name])
    assert atomic.remove_stale_temps(tmp_path, all_but_mine=True) == [live]


def test_temp_names():
    assert atomic.is_temp_name(".step_00000010.tmp-123-0a1b2c3d")
    assert atomic.is_temp_name(".curve.png.tmp-9-0a1b2c3d.png")
    assert atomic.is_temp_name(".step_00000010.old-77-ffffffff")
    for name in ("step_00000010", ".step_00000010", ".x.tmp-12", "config.json", ".x.tmp-a-0a1b2c3d"):
        assert not atomic.is_temp_name(name), name
