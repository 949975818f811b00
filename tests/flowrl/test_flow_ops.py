"""The flow op's registered custom ops: schema, fake and autograd registrations checked by torch.library.opcheck;
torch.compile and torch.export trace a Flow-Attention trunk through them without graph breaks and compute the
same values; bad devices and dtypes are refused by name."""

from __future__ import annotations

import pytest
import torch

from flowrl.models import Flowformer, FlowformerConfig
from flowrl.ops import FlowState, flow_attention
from flowrl.ops.flow import ops


def _qkv(B=2, H=2, L=7, D=4, M=3, *, dtype=torch.float64, seed=0, grad=True):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, L, n, generator=g, dtype=dtype, requires_grad=grad) for n in (D, D, M)]


def _state(B=2, H=2, D=4, M=3, seed=1):
    q, k, v = _qkv(B, H, 5, D, M, seed=seed, grad=False)
    _, s = flow_attention(q, k, v, causal=True, return_state=True)
    return list(s)


OPCHECK = {
    "causal": lambda: (ops.flow_causal, (*_qkv(), [], 1e-6, 1.0, 4, None)),
    "causal-state": lambda: (ops.flow_causal, (*_qkv(), _state(), 1e-6, 1.0, 4, None)),
    "causal-bf16-values": lambda: (ops.flow_causal, (*_qkv(dtype=torch.float32), [], 1e-6, 1.0, 64, torch.bfloat16)),
    "causal-backward": lambda: (
        ops.flow_causal_backward,
        (torch.randn(2, 2, 7, 3, dtype=torch.float64), *_qkv(grad=False), [], 1e-6, 1.0, 4, None),
    ),
    "noncausal": lambda: (ops.flow_noncausal, (*_qkv(), None, None, 1e-6, 1.0)),
    "noncausal-masked": lambda: (
        ops.flow_noncausal,
        (*_qkv(), torch.tensor([[False] * 6 + [True]] * 2), torch.tensor([[False] * 5 + [True] * 2] * 2), 1e-6, 1.0),
    ),
    "step-new": lambda: (ops.flow_causal_step, (*_qkv(grad=False), [], 1e-6, 1.0, 64)),
    "step-one-token": lambda: (ops.flow_causal_step, (*_qkv(L=1, grad=False), _state(), 1e-6, 1.0, 64)),
    "step-short": lambda: (ops.flow_causal_step, (*_qkv(L=3, grad=False), _state(), 1e-6, 1.0, 64)),
    "step-chunked": lambda: (ops.flow_causal_step, (*_qkv(L=20, grad=False), _state(), 1e-6, 1.0, 8)),
}


@pytest.mark.parametrize("case", list(OPCHECK))
def test_opcheck(case):
    """Schema (no hidden mutation or aliasing), fake (shape) function, autograd registration, dispatch."""
    op, args = OPCHECK[case]()
    torch.library.opcheck(op, args)


def _trunk(causal: bool) -> Flowformer:
    torch.manual_seed(0)
    cfg = FlowformerConfig(dim=16, depth=2, heads=2, causal=causal, dropout=0.0)
    return Flowformer(cfg).double()


def _flow_ops_in(graphs) -> list[str]:
    return [str(n.target) for g in graphs for n in g.graph.nodes if "flowrl" in str(n.target)]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_dynamo_sees_the_flow_op_as_one_node_without_graph_breaks(causal):
    trunk = _trunk(causal)
    x = torch.randn(3, 9, 16, dtype=torch.float64)

    def loss(x):
        return trunk(x).square().mean()

    explained = torch._dynamo.explain(loss)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    name = "flowrl.flow_causal.default" if causal else "flowrl.flow_noncausal.default"
    assert _flow_ops_in(explained.graphs) == [name, name]  # one node per layer


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_compiled_trunk_gives_eager_values_and_gradients(causal):
    torch._dynamo.reset()
    trunk = _trunk(causal)
    x = torch.randn(3, 9, 16, dtype=torch.float64)
    compiled = torch.compile(trunk, backend="aot_eager", fullgraph=True)  # fake + autograd functions traced
    y_eager, y_comp = trunk(x), compiled(x)
    torch.testing.assert_close(y_comp, y_eager, rtol=1e-12, atol=1e-12)
    g_eager = torch.autograd.grad(y_eager.square().sum(), list(trunk.parameters()))
    g_comp = torch.autograd.grad(y_comp.square().sum(), list(trunk.parameters()))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_export_holds_the_flow_op_and_runs(causal):
    trunk = _trunk(causal).eval()
    x = torch.randn(2, 6, 16, dtype=torch.float64)
    exported = torch.export.export(trunk, (x,))
    targets = [str(n.target) for n in exported.graph.nodes]
    assert sum("flowrl.flow_" in t for t in targets) == 2
    x2 = torch.randn(2, 6, 16, dtype=torch.float64)
    torch.testing.assert_close(exported.module()(x2), trunk(x2), rtol=1e-12, atol=1e-12)


def test_state_continuation_traces_as_the_step_op():
    q, k, v = _qkv(L=3, grad=False)
    state = FlowState(*_state())

    def step(q, k, v, state):
        return flow_attention(q, k, v, causal=True, state=state, return_state=True)

    explained = torch._dynamo.explain(step)(q, k, v, state)
    assert explained.graph_break_count == 0
    assert _flow_ops_in(explained.graphs) == ["flowrl.flow_causal_step.default"]
    y, new = torch.compile(step, backend="aot_eager", fullgraph=True)(q, k, v, state)
    y_ref, new_ref = step(q, k, v, state)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    for a, b in zip(new, new_ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_mixed_devices_and_unsupported_dtypes_are_named():
    q, k, v = _qkv(grad=False)
    with pytest.raises(ValueError, match=r"different devices \(cpu, meta, cpu\)"):
        flow_attention(q, k.to("meta"), v, causal=True)
    state = FlowState(*[x.to("meta") for x in _state()])
    with pytest.raises(ValueError, match="state is on meta but q, k, v are on cpu"):
        flow_attention(q, k, v, causal=True, state=state)
    with pytest.raises(ValueError, match="key_padding_mask is on meta but q, k, v are on cpu"):
        flow_attention(q, k, v, key_padding_mask=torch.zeros(2, 7, dtype=torch.bool, device="meta"))
    for dtype in (torch.int32, torch.complex64):
        with pytest.raises(ValueError, match=f"dtype {dtype}; supported: float16, bfloat16, float32, float64"):
            flow_attention(*(x.to(dtype) for x in (q, k, v)), causal=True)
