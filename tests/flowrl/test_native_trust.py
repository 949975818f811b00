"""flowrl.ops.native loads code only from a cache the user owns and only what it built itself.

Each test plants a library whose constructor leaves a marker file (what an attacker's library would do with
the victim's rights) and checks that flowrl never runs it; damaged or foreign cache entries are rebuilt.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from flowrl.ops import native

pytestmark = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler here")


@pytest.fixture(scope="module")
def built() -> bytes:
    """The library as built in the test run's own cache (one compile for the whole run)."""
    if not native.available():
        pytest.skip(f"native kernels {native.status()}")
    return native._target().read_bytes()


@pytest.fixture
def fresh(monkeypatch, tmp_path, built):
    """A private, empty cache root and no library loaded in this process; restored afterwards. Builds copy
    the run's library (what a compile gives, without a compile per test); test_native.py runs the compiler."""

    def copy_build(target):
        tmp = target.with_name(".copy.so")
        tmp.write_bytes(built)
        tmp.chmod(0o700)
        native.trusted_cache.record_hash(target, built)
        os.replace(tmp, target)

    monkeypatch.setattr(native, "_build", copy_build)
    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    monkeypatch.setenv("FLOWRL_CACHE", str(root))
    monkeypatch.delenv("FLOWRL_NATIVE", raising=False)
    native._reset_for_tests()
    yield root
    native._reset_for_tests()


def _planted(tmp_path: Path, *, symbols: bool = False) -> tuple[bytes, Path]:
    """A shared library whose constructor creates a marker file; returns (its bytes, the marker path)."""
    marker = tmp_path / "constructor-ran"
    src = tmp_path / "planted.c"
    body = f'__attribute__((constructor)) static void planted(void) {{ fclose(fopen("{marker}", "w")); }}'
    if symbols:  # a harmless library of another ABI
        body = "int flowrl_native_abi_version(void) { return -1; }\n"
    src.write_text("#include <stdio.h>\n" + body + "\n")
    out = tmp_path / "planted.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out.read_bytes(), marker


def _plant(target: Path, data: bytes, *, record_hash: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    if record_hash:
        target.with_name(target.name + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def _recorded_hash_matches(target: Path) -> bool:
    recorded = target.with_name(target.name + ".sha256").read_text().strip()
    return recorded == hashlib.sha256(target.read_bytes()).hexdigest()


def test_build_records_a_hash_beside_the_library(fresh, monkeypatch):
    monkeypatch.undo()  # the real compiler
    monkeypatch.setenv("FLOWRL_CACHE", str(fresh))
    monkeypatch.delenv("FLOWRL_NATIVE", raising=False)
    assert native.library() is not None
    target = native._target()
    assert _recorded_hash_matches(target)
    for d in (fresh, fresh / "native", target.parent):  # private directories
        assert d.stat().st_mode & 0o077 == 0 or d == fresh


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757], ids=["world", "group", "other"])
def test_cache_writable_by_others_is_never_loaded(fresh, tmp_path, monkeypatch, mode):
    data, marker = _planted(tmp_path)
    fresh.chmod(mode)  # another local user could have planted the library (and its hash)
    _plant(native._target(), data, record_hash=True)
    with pytest.warns(RuntimeWarning, match="writable by others"):
        assert native.library() is None
    assert not marker.exists()
    monkeypatch.setenv("FLOWRL_NATIVE", "1")
    native._reset_for_tests()
    with pytest.raises(native.NativeBuildError, match=f"{fresh}.*writable by others.*chmod go-w"):
        native.library()
    assert not marker.exists()


def test_cache_directory_planted_by_another_user_is_never_loaded(fresh, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    data, marker = _planted(tmp_path)
    target = native._target()
    _plant(target, data, record_hash=True)
    os.chown(target.parent, 65534, 65534)  # nobody's
    with pytest.warns(RuntimeWarning, match="owned by uid 65534"):
        assert native.library() is None
    assert not marker.exists()


def test_relative_cache_is_refused_not_resolved_against_the_working_directory(fresh, tmp_path, monkeypatch):
    data, marker = _planted(tmp_path)
    work = tmp_path / "work"
    work.mkdir(mode=0o700)
    monkeypatch.chdir(work)
    monkeypatch.setenv("FLOWRL_CACHE", "cache")
    key_dir = native._target_key()
    _plant(work / "cache" / "native" / key_dir / "flowrl_native.so", data, record_hash=True)
    with pytest.warns(RuntimeWarning, match="FLOWRL_CACHE must be an absolute path, got 'cache'"):
        assert native.library() is None
    assert not marker.exists()


@pytest.mark.parametrize("record_hash", [False, True], ids=["no-hash", "wrong-hash"])
def test_foreign_library_in_own_cache_is_rebuilt_not_loaded(fresh, tmp_path, record_hash):
    data, marker = _planted(tmp_path)
    target = native._target()
    _plant(target, data, record_hash=False)
    if record_hash:
        target.with_name(target.name + ".sha256").write_text("0" * 64 + "\n")
    assert native.library() is not None and native.status() == "on"
    assert not marker.exists()
    assert _recorded_hash_matches(target) and target.read_bytes() != data


def test_foreign_library_with_its_hash_but_wrong_symbols_is_rebuilt(fresh, tmp_path):
    data, _ = _planted(tmp_path, symbols=True)  # a valid library, hash recorded, but not flowrl's
    target = native._target()
    _plant(target, data, record_hash=True)
    assert native.library() is not None and native.status() == "on"
    assert _recorded_hash_matches(target) and target.read_bytes() != data


def test_truncated_library_is_rebuilt_not_a_crash(monkeypatch, tmp_path, built):
    """A cached library cut short (a full disk, a killed copy) used to kill every process with SIGBUS."""
    root = tmp_path / "cache"
    monkeypatch.setenv("FLOWRL_CACHE", str(root))
    target = native._target()
    target.parent.mkdir(parents=True, mode=0o700)
    target.write_bytes(built)
    native.trusted_cache.record_hash(target, built)
    good = target.read_bytes()
    with open(target, "r+b") as f:
        f.truncate(min(70_000, len(good) // 2))
    code = "from flowrl.ops import native; import sys; sys.exit(0 if native.status() == 'on' else 3)"
    proc = subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), capture_output=True, text=True)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert _recorded_hash_matches(target) and len(target.read_bytes()) == len(good)


def test_every_cpp_exception_becomes_a_python_error(built):
    """The C boundary catches everything, also from worker threads (uncaught, the process would terminate)."""
    code = textwrap.dedent(
        """
        from flowrl.ops import native
        for kind in ("bad_alloc", "runtime_error", "other"):
            for threads in (1, 3):
                for use_std_threads in (False, True):
                    try:
                        native._selftest_throw(kind, threads, use_std_threads)
                    except MemoryError as e:
                        print(kind, threads, use_std_threads, "MemoryError", e)
                    except RuntimeError as e:
                        print(kind, threads, use_std_threads, "RuntimeError", e)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env=os.environ.copy(), capture_output=True, text=True)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == 12
    for line in lines:
        kind = line.split()[0]
        if kind == "bad_alloc":
            assert "MemoryError" in line and "out of memory" in line
        elif kind == "runtime_error":
            assert "RuntimeError" in line and "selftest failure" in line
        else:
            assert "RuntimeError" in line and "unknown C++ exception" in line


def test_dropout_and_decoder_still_use_the_trusted_library(fresh):
    from flowrl.layers.dropout import dropout

    assert native.library() is not None
    torch.manual_seed(0)
    y = dropout(torch.ones(1000), 0.5)
    assert 300 < int((y == 0).sum()) < 700
