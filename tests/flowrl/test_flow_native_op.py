"""The causal flow op's native CPU implementation (flowrl/ops/flow/native_chunk.cpp) against the naive float64
reference, forward and backward: exact to rounding in float64, within documented tolerances in float32 and
bfloat16; strided inputs (views of a fused projection) read in place; the dispatch rules of ops.implementation."""

from __future__ import annotations

import pytest
import torch

from flowrl.ops import flow_attention
from flowrl.ops.flow import ops
from flowrl.ops.flow.naive import flow_attention_naive

EPS, CLAMP = 1e-3, 1.0


@pytest.fixture(autouse=True)
def _native_built():
    from flowrl.ops import native

    if not native.available():
        pytest.skip(f"native kernels {native.status()}")


def _qkv(B, H, L, D, M, seed=0, scale=1.5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, n, generator=g, dtype=torch.float64) * scale for n in (D, D, M)]


def _reference(q, k, v):
    leaves = [x.detach().requires_grad_(True) for x in (q, k, v)]
    y = flow_attention_naive(*leaves, causal=True, eps=EPS, clamp=CLAMP)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    return y.detach(), gy, torch.autograd.grad(y, leaves, gy)


def _native(q, k, v, gy, chunk, dtype):
    q, k, v = (x.to(dtype).requires_grad_(True) for x in (q, k, v))
    with ops.implementation("native"):
        y = ops.flow_causal(q, k, v, [], EPS, CLAMP, chunk, None)
        grads = torch.autograd.grad(y, (q, k, v), gy.to(dtype))
    return y, grads


SHAPES = [(2, 3, 37, 8, 5, 16), (1, 2, 64, 16, 16, 64), (2, 1, 130, 32, 24, 64), (1, 1, 1, 4, 4, 64)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_native_matches_the_naive_reference_in_float64(shape):
    *dims, chunk = shape
    q, k, v = _qkv(*dims)
    ref, gy, gref = _reference(q, k, v)
    y, grads = _native(q, k, v, gy, chunk, torch.float64)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
    for g, r in zip(grads, gref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


# Relative to the largest reference value: float32 rounding (~1e-7 per op, L-long sums), bfloat16 inputs and
# outputs (8-bit mantissa: 2^-9 ≈ 2e-3 per rounding, a few roundings per value)
TOLERANCE = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_native_low_precision_within_tolerance_of_float64(dtype):
    q, k, v = _qkv(2, 2, 70, 16, 12, seed=3)
    ref, gy, gref = _reference(q, k, v)
    y, grads = _native(q, k, v, gy, 32, dtype)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    for got, want in zip((y, *grads), (ref, *gref)):
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err < TOLERANCE[dtype], (dtype, err.item())


def test_native_reads_strided_views_in_place():
    """q, k, v as views of one fused [B, L, H, 3, D] projection (what attention layers pass)."""
    B, H, L, D = 2, 3, 19, 8
    fused = torch.randn(B, L, H, 3, D, dtype=torch.float64)
    q, k, v = (fused[:, :, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    ref, gy, gref = _reference(q, k, v)
    with ops.implementation("native"):
        y = ops.flow_causal(q, k, v, [], EPS, CLAMP, 8, None)
        g = ops.flow_causal_backward(gy.transpose(2, 3).contiguous().transpose(2, 3), q, k, v, [], EPS, CLAMP, 8, None)
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(g, gref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_flow_attention_runs_the_native_op_on_cpu_and_torch_for_a_state():
    q, k, v = _qkv(1, 1, 5, 4, 4)
    assert ops.chosen_implementation("causal", q) == "native"
    state = list(flow_attention(q, k, v, causal=True, return_state=True)[1])
    assert ops.chosen_implementation("causal", q, state) == "torch"
    assert ops.chosen_implementation("noncausal", q) == "torch"
    with ops.implementation("torch"):
        assert ops.chosen_implementation("causal", q) == "torch"
    with ops.implementation("native"), pytest.raises(RuntimeError, match="a carried state"):
        ops.flow_causal(q, k, v, state, EPS, CLAMP, 64, None)
    with pytest.raises(ValueError, match="must be one of"):
        with ops.implementation("cuda"):
            pass


def test_native_and_torch_implementations_agree_through_flow_attention():
    q, k, v = (x.float().requires_grad_(True) for x in _qkv(2, 2, 50, 8, 8, seed=5))
    outs = {}
    for impl in ("native", "torch"):
        with ops.implementation(impl):
            y = flow_attention(q, k, v, causal=True, eps=EPS, clamp=CLAMP)
            outs[impl] = (y, *torch.autograd.grad(y.square().sum(), (q, k, v)))
    for a, b in zip(outs["native"], outs["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
