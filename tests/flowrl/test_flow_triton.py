"""The causal flow op's Triton chunk kernels (flowrl/ops/flow/triton_chunk.py) against the float64 references:
on CPU through Triton's interpreter (TRITON_INTERPRET=1, small shapes: the interpreter runs a program in numpy),
on CUDA in the tests marked gpu. Skipped where Triton is not installed."""

from __future__ import annotations

import pytest
import torch

from flowrl.ops import flow_attention
from flowrl.ops.flow import ops
from flowrl.ops.flow.naive import flow_attention_naive

pytest.importorskip("triton")
from flowrl.ops.flow import triton_chunk  # noqa: E402

EPS, CLAMP = 1e-3, 1.0
# Relative to the largest reference value: float32 products are exact (no TF32) and the scans run in
# float32; bfloat16 rounds q′, k, v′, the chunk's score matrix and the gradients to 8-bit mantissas.
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 3e-2}


@pytest.fixture
def interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert triton_chunk.interpreting()


def _qkv(B, H, L, D, M, seed=0, scale=1.5, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(B, H, L, n, generator=g, dtype=torch.float64) * scale).to(device) for n in (D, D, M)]


def _max_rel(got, want):
    return ((got.double().cpu() - want.cpu()).abs().max() / want.abs().max()).item()


def test_linear_attention_kernels_match_the_float64_products(interpret):
    """Forward and backward of h = tril(q kᵀ) v over three chunks (the last one partial)."""
    q, k, v = (x.float().requires_grad_(True) for x in _qkv(1, 2, 37, 16, 20))
    h = triton_chunk.linear_attention(q, k, v, 16)
    ref = torch.tril(q.double() @ k.double().transpose(-1, -2)) @ v.double()
    gh = torch.randn_like(h)
    grads = torch.autograd.grad(h, (q, k, v), gh)
    gref = torch.autograd.grad(ref, (q, k, v), gh.double())
    for got, want in zip((h, *grads), (ref, *gref)):
        assert _max_rel(got, want) < 1e-6


def _flow_case(device, dtype, B=1, H=2, L=37, D=16, M=20, chunk=16):
    q, k, v = _qkv(B, H, L, D, M, seed=4)
    leaves = [x.clone().requires_grad_(True) for x in (q, k, v)]
    ref = flow_attention_naive(*leaves, causal=True, eps=EPS, clamp=CLAMP)
    gy = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    gref = torch.autograd.grad(ref, leaves, gy)
    x = [t.to(device, dtype).requires_grad_(True) for t in (q, k, v)]
    with ops.implementation("triton"):
        y = ops.flow_causal(*x, [], EPS, CLAMP, chunk, None)
        grads = torch.autograd.grad(y, x, gy.to(device, dtype))
    assert y.dtype == dtype and y.device.type == device
    for got, want in zip((y, *grads), (ref, *gref)):
        err = _max_rel(got, want)
        assert err < TOLERANCE[dtype], (dtype, err)


@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_triton_flow_op_matches_the_naive_reference_interpreted(interpret, dtype):
    _flow_case("cpu", dtype)


def test_triton_refuses_what_it_cannot_run(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, k, v = _qkv(1, 1, 4, 4, 4)
    assert "CUDA tensors" in triton_chunk.unsupported("causal", q.float())
    with ops.implementation("triton"), pytest.raises(RuntimeError, match="triton implementation cannot run"):
        ops.flow_causal(q.float(), k.float(), v.float(), [], EPS, CLAMP, 64, None)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert "dtype torch.float64" in triton_chunk.unsupported("causal", q)
    assert "no Triton kernel" in triton_chunk.unsupported("noncausal", q.float())


# ---------------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
@pytest.mark.parametrize("shape", [(1, 2, 37, 16, 20, 16), (2, 4, 300, 64, 64, 64)], ids=["small", "dt"])
def test_triton_flow_op_matches_the_naive_reference_on_cuda(dtype, shape):
    *dims, chunk = shape
    _flow_case("cuda", dtype, *dims, chunk=chunk)


@pytest.mark.gpu
def test_flow_attention_on_cuda_runs_triton_and_agrees_with_torch_under_autocast():
    q, k, v = (x.float().cuda().requires_grad_(True) for x in _qkv(2, 2, 200, 32, 32, seed=2))
    assert ops.chosen_implementation("causal", q) == "triton"
    outs = {}
    for impl in ("triton", "torch"):
        with ops.implementation(impl), torch.autocast("cuda", dtype=torch.bfloat16):
            y = flow_attention(q, k, v, causal=True, eps=EPS, clamp=CLAMP)
            outs[impl] = (y.float(), *torch.autograd.grad(y.float().square().sum(), (q, k, v)))
    for a, b in zip(outs["triton"], outs["torch"]):
        assert _max_rel(a, b.double()) < 3e-2
