"""torch.compile of a flow Decision Transformer: no graph breaks (the flow op is one node per layer) and the
same loss and gradients as eager."""

from __future__ import annotations

import torch
from flowrl.agents.config import DecisionTransformerConfig
from flowrl.agents.models import DecisionTransformer


def _model_and_batch(dropout: float):
    torch.manual_seed(0)
    cfg = DecisionTransformerConfig(context=5, dim=32, depth=2, heads=2, dropout=dropout)
    model = DecisionTransformer(cfg, 4, 2)
    B, T = 3, 5
    batch = (torch.randn(B, T, 4), torch.randn(B, T, 2), torch.randn(B, T, 1), torch.randint(0, 100, (B, T)))
    return model, batch


def _loss(model, states, actions, rtg, timesteps):
    return (model(states, actions, rtg, timesteps) - actions).square().mean()


def test_flow_dt_traces_in_one_graph_with_the_flow_op():
    model, batch = _model_and_batch(dropout=0.1)  # training mode: dropout traced too
    explained = torch._dynamo.explain(lambda *b: _loss(model, *b))(*batch)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    flow_nodes = [n.target for g in explained.graphs for n in g.graph.nodes if "flowrl" in str(n.target)]
    assert [str(t) for t in flow_nodes] == ["flowrl.flow_causal.default"] * 2


def test_compiled_flow_dt_gives_the_eager_loss_and_gradients():
    torch._dynamo.reset()
    model, batch = _model_and_batch(dropout=0.0)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    eager_loss = _loss(model, *batch)
    compiled_loss = _loss(compiled, *batch)
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-6, atol=1e-7)
    g_eager = torch.autograd.grad(eager_loss, list(model.parameters()))
    g_comp = torch.autograd.grad(compiled_loss, list(model.parameters()))
    for a, b in zip(g_comp, g_eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
