"""FlowDecoder: recurrent inference equals the trunk's full forward, row by row, and refuses what it can't run."""

from __future__ import annotations

import pytest
import torch

from flowrl.layers import FlowAttention
from flowrl.models import FlowDecoder, Flowformer, FlowformerConfig
from flowrl.ops import native as native_lib


@pytest.fixture(params=[False, True], ids=["torch", "native"])
def native(request):
    """Both backends of FlowDecoder: torch operators and the C++ kernel (built once per test run)."""
    if request.param and not native_lib.available():
        pytest.skip(f"native kernel {native_lib.status()}")
    return request.param


GRID = [  # heads, activation, final_norm, chunk lengths fed one after another
    (1, "gelu", True, (1, 1, 1, 1)),
    (2, "relu", True, (3, 3, 3)),
    (4, "gelu", False, (2, 5, 1, 4)),
    (2, "gelu", True, (12,)),
]


def _trunk(heads=2, activation="gelu", final_norm=True, dtype=torch.float64, **kw) -> Flowformer:
    torch.manual_seed(0)
    cfg = FlowformerConfig(
        dim=16,
        depth=3,
        heads=heads,
        causal=True,
        dropout=0.0,
        activation=activation,
        final_norm=final_norm,
        clamp=2.0,
        **kw,
    )
    return Flowformer(cfg).to(dtype).eval()


IDS = [f"H{h}-{a}-norm{int(n)}-L{'+'.join(map(str, c))}" for h, a, n, c in GRID]


@pytest.mark.parametrize("heads,activation,final_norm,chunks", GRID, ids=IDS)
def test_steps_equal_full_forward(heads, activation, final_norm, chunks, native):
    trunk = _trunk(heads, activation, final_norm)
    x = torch.randn(3, sum(chunks), 16, dtype=torch.float64)
    full = trunk(x)
    every, last = FlowDecoder(trunk, 3, native=native), FlowDecoder(trunk, 3, native=native)
    assert every.native == native
    got, pos = [], 0
    for L in chunks:
        got.append(every.step(x[:, pos : pos + L], last_only=False))
        pos += L
        torch.testing.assert_close(last.step(x[:, pos - L : pos]), full[:, pos - 1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.cat(got, 1), full, rtol=1e-12, atol=1e-12)
    assert every.seen.tolist() == [sum(chunks)] * 3


def test_float32_matches_the_module_path(native):
    trunk = _trunk(dtype=torch.float32)
    x = torch.randn(4, 9, 16)
    dec = FlowDecoder(trunk, 4, native=native)
    dec.step(x[:, :6])
    torch.testing.assert_close(dec.step(x[:, 6:]), trunk(x)[:, -1], rtol=1e-5, atol=1e-5)


def test_projections_without_bias(native):
    trunk = _trunk()
    for block in trunk.blocks:
        block.attn = FlowAttention(16, 2, causal=True, bias=False, clamp=2.0).double()
    x = torch.randn(2, 7, 16, dtype=torch.float64)
    dec = FlowDecoder(trunk, 2, native=native)
    dec.step(x[:, :4])
    torch.testing.assert_close(dec.step(x[:, 4:]), trunk(x)[:, -1], rtol=1e-12, atol=1e-12)


def test_rows_run_independently_and_reset_alone(native):
    trunk = _trunk()
    x = torch.randn(3, 8, 16, dtype=torch.float64)
    fresh = torch.randn(3, 8, 16, dtype=torch.float64)
    dec = FlowDecoder(trunk, 3, native=native)
    dec.step(x[:, :4])
    # rows 0 and 2 continue; row 1 restarts (bool mask) and reads a new sequence
    dec.reset(torch.tensor([False, True, False]))
    assert dec.seen.tolist() == [4, 0, 4]
    h1 = dec.step(fresh[1:2, :3], torch.tensor([1]))
    torch.testing.assert_close(h1, trunk(fresh[1:2, :3])[:, -1], rtol=1e-12, atol=1e-12)
    h02 = dec.step(x[[2, 0], 4:7], torch.tensor([2, 0]))  # any row order
    torch.testing.assert_close(h02, trunk(x)[[2, 0], 6], rtol=1e-12, atol=1e-12)
    h0 = dec.step(x[[0], 7:8], torch.tensor([True, False, False]))  # or a bool mask
    torch.testing.assert_close(h0, trunk(x)[[0], 7], rtol=1e-12, atol=1e-12)
    dec.reset()
    assert dec.seen.tolist() == [0, 0, 0]
    torch.testing.assert_close(dec.step(x[:, :2]), trunk(x[:, :2])[:, -1], rtol=1e-12, atol=1e-12)


def test_refresh_reads_changed_weights(native):
    trunk = _trunk()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    dec = FlowDecoder(trunk, 2, native=native)
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(0.05)
    stale = dec.step(x)
    assert not torch.allclose(stale, trunk(x)[:, -1])
    dec.refresh()
    dec.reset()
    torch.testing.assert_close(dec.step(x), trunk(x)[:, -1], rtol=1e-12, atol=1e-12)


def test_bad_trunks_and_inputs():
    with pytest.raises(ValueError, match="needs a causal flow trunk"):
        FlowDecoder(Flowformer(FlowformerConfig(dim=16, heads=2, causal=True, attention="softmax")), 2)
    with pytest.raises(ValueError, match="needs a causal flow trunk"):
        FlowDecoder(Flowformer(FlowformerConfig(dim=16, heads=2, causal=False)), 2)
    dec = FlowDecoder(_trunk(), 2)
    with pytest.raises(ValueError, match="batch must be >= 1"):
        FlowDecoder(_trunk(), 0)
    with pytest.raises(ValueError, match=r"expected \[R, L, 16\]"):
        dec.step(torch.zeros(2, 3, 8))
    with pytest.raises(ValueError, match="3 rows for 2 states"):
        dec.step(torch.zeros(3, 1, 16))
    with pytest.raises(ValueError, match="no tokens"):
        dec.step(torch.zeros(2, 0, 16))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
@pytest.mark.parametrize("dim,heads", [(40, 1), (96, 3), (128, 1)])
def test_native_head_sizes(dim, heads, dtype, tol):
    """Head sizes that fill the kernel's vector blocks exactly, partly, or not at all; long and short chunks."""
    if not native_lib.available():
        pytest.skip(f"native kernel {native_lib.status()}")
    torch.manual_seed(1)
    cfg = FlowformerConfig(dim=dim, depth=2, heads=heads, causal=True, dropout=0.0)
    trunk = Flowformer(cfg).to(dtype).eval()
    x = torch.randn(7, 23, dim, dtype=dtype)  # 7 rows: blocks of 6 rows and one left over in the products
    full = trunk(x)
    dec = FlowDecoder(trunk, 7, native=True)
    torch.testing.assert_close(dec.step(x[:, :13], last_only=False), full[:, :13], rtol=tol, atol=tol)
    for t in range(13, 23):
        torch.testing.assert_close(dec.step(x[:, t : t + 1]), full[:, t], rtol=tol, atol=tol)


def test_native_rows_out_of_range():
    if not native_lib.available():
        pytest.skip(f"native kernel {native_lib.status()}")
    dec = FlowDecoder(_trunk(), 3, native=True)
    with pytest.raises(ValueError, match=r"rows must be in \[0, 3\)"):
        dec.step(torch.zeros(1, 1, 16, dtype=torch.float64), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"rows must be in \[0, 3\)"):
        dec.step(torch.zeros(1, 1, 16, dtype=torch.float64), torch.tensor([-1]))
    assert dec.seen.tolist() == [0, 0, 0]  # nothing ran


def test_native_calls_split_across_threads_equal_the_trunk():
    """Large calls run row chunks on several threads (rows in any order, with and without row indices)."""
    if not native_lib.available():
        pytest.skip(f"native kernel {native_lib.status()}")
    trunk = _trunk()
    x = torch.randn(9, 24, 16, dtype=torch.float64)
    full = trunk(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        dec = FlowDecoder(trunk, 9, native=True)
        torch.testing.assert_close(dec.step(x[:, :20], last_only=False), full[:, :20], rtol=1e-12, atol=1e-12)
        order = torch.tensor([4, 0, 8, 2, 6, 1, 3, 7, 5])
        h = dec.step(x[order, 20:24], order)  # 9 x 4 = 36 token-rows: one thread
        torch.testing.assert_close(h, full[order, 23], rtol=1e-12, atol=1e-12)
        dec.reset()
        dec.step(x[order, :16], order)  # 144 token-rows: split, by row indices
        torch.testing.assert_close(dec.step(x[:, 16:24]), full[:, 23], rtol=1e-12, atol=1e-12)
        assert dec.seen.tolist() == [24] * 9
    finally:
        torch.set_num_threads(threads)


def test_duplicate_and_out_of_range_rows_are_refused_before_anything_runs(native):
    """Two inputs for one state would race between the kernel's threads and disagree with the torch path."""
    dec = FlowDecoder(_trunk(), 3, native=native)
    x = torch.randn(2, 2, 16, dtype=torch.float64)
    dec.step(x[:1], torch.tensor([2]))
    with pytest.raises(ValueError, match=r"rows must be distinct, got \[1, 1\]"):
        dec.step(x, torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"rows must be in \[0, 3\), got \[0, 3\]"):
        dec.step(x, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"rows must be distinct, got \[0, 0\]"):
        dec.reset(torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"rows must be in \[0, 3\), got \[-1\]"):
        dec.reset(torch.tensor([-1]))
    assert dec.seen.tolist() == [0, 0, 2]  # nothing ran, nothing was reset
