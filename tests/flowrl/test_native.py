"""flowrl.ops.native: the C++ decode kernel is built once into the cache, loaded from it, and every way of
switching it off or failing to build it ends in torch operators or a clear error."""

from __future__ import annotations

import warnings

import pytest
import torch

from flowrl.models import FlowDecoder, Flowformer, FlowformerConfig
from flowrl.ops import native


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache and no library loaded in this process; restored afterwards."""
    monkeypatch.setenv("FLOWRL_CACHE", str(tmp_path))
    monkeypatch.delenv("FLOWRL_NATIVE", raising=False)
    native._reset_for_tests()
    yield tmp_path
    native._reset_for_tests()


def _trunk() -> Flowformer:
    torch.manual_seed(0)
    return Flowformer(FlowformerConfig(dim=16, depth=2, heads=2, causal=True)).eval()


def _built(root):
    return sorted((root / "native").glob("*/flowrl_native.so"))


def test_builds_once_into_the_cache_then_loads(fresh, monkeypatch):
    if native._compiler() is None:
        pytest.skip("no C++ compiler here")
    assert native.library() is not None and native.status() == "on"
    (so,) = _built(fresh)
    stamp = so.stat().st_mtime_ns
    native._reset_for_tests()

    def no_build(target):
        raise AssertionError("rebuilt although the cache had the library")

    monkeypatch.setattr(native, "_build", no_build)
    assert native.available()
    assert so.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in so.parent.iterdir()) == [so.name, so.name + ".sha256"]  # no temp files left


def test_damaged_cache_entry_is_rebuilt(fresh):
    if native._compiler() is None:
        pytest.skip("no C++ compiler here")
    so = native._target()
    so.parent.mkdir(parents=True)
    so.write_bytes(b"\x7fELF truncated")
    assert native.library() is not None
    assert so.stat().st_size > 1000


def test_off_switch(fresh, monkeypatch):
    monkeypatch.setenv("FLOWRL_NATIVE", "0")
    assert native.library() is None and not native.available()
    assert native.status() == "off (FLOWRL_NATIVE=0)"
    assert _built(fresh) == []
    assert not FlowDecoder(_trunk(), 2).native
    with pytest.raises(ValueError, match="native=True but the native kernel is off"):
        FlowDecoder(_trunk(), 2, native=True)


def test_missing_compiler_falls_back_with_one_warning(fresh, monkeypatch):
    monkeypatch.setenv("CXX", str(fresh / "no-such-compiler"))
    with pytest.warns(RuntimeWarning, match="native kernels unavailable, using torch operators"):
        assert native.library() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process
        dec = FlowDecoder(_trunk(), 2)
    assert not dec.native
    x = torch.randn(2, 4, 16)
    torch.testing.assert_close(dec.step(x), _trunk()(x)[:, -1], rtol=1e-5, atol=1e-5)
    assert "cannot run the C++ compiler" in native.status()


def test_required_kernel_that_cannot_build_is_an_error(fresh, monkeypatch):
    monkeypatch.setenv("FLOWRL_NATIVE", "1")
    monkeypatch.setenv("CXX", str(fresh / "no-such-compiler"))
    with pytest.raises(native.NativeBuildError, match="FLOWRL_NATIVE=1 but the native kernel is unavailable"):
        native.library()
    with pytest.raises(native.NativeBuildError):
        FlowDecoder(_trunk(), 2)


def test_compiler_errors_are_reported(fresh, monkeypatch):
    monkeypatch.setenv("FLOWRL_NATIVE", "1")
    monkeypatch.setenv("CXX", "false")  # exists, fails
    with pytest.raises(native.NativeBuildError, match="false failed to build native.cpp"):
        native.library()
    assert _built(fresh) == [] and not any((fresh / "native").rglob("*.so"))


def test_bad_switch_value(fresh, monkeypatch):
    monkeypatch.setenv("FLOWRL_NATIVE", "yes")
    with pytest.raises(ValueError, match="FLOWRL_NATIVE must be auto, 0 or 1, got 'yes'"):
        native.library()
