"""Attention modules, blocks, embeddings and the trunk: reference layout, incremental state, config JSON."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from flowrl.layers import (
    Dropout,
    FlowAttention,
    LearnedPositionEmbedding,
    SinusoidalPositionEmbedding,
    SoftmaxAttention,
)
from flowrl.layers.dropout import keep_mask
from flowrl.models import Flowformer, FlowformerConfig
from flowrl.ops.naive import flow_attention_naive

REFERENCE_KEYS = {f"{p}_projection.{w}" for p in ("query", "key", "value", "out") for w in ("weight", "bias")}


@pytest.mark.parametrize("cls", [FlowAttention, SoftmaxAttention])
def test_projection_layout_matches_reference_module(cls):
    assert set(cls(16, 4).state_dict()) == REFERENCE_KEYS


@pytest.mark.parametrize("causal", [True, False])
def test_flow_attention_module_is_projection_plus_op(causal):
    torch.manual_seed(0)
    attn = FlowAttention(12, 3, causal=causal, clamp=10.0).double().eval()
    x = torch.randn(2, 9, 12, dtype=torch.float64)
    split = lambda p: p(x).view(2, 9, 3, 4).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.query_projection), split(attn.key_projection), split(attn.value_projection)
    y = flow_attention_naive(q, k, v, causal=causal, clamp=10.0).transpose(1, 2).reshape(2, 9, 12)
    torch.testing.assert_close(attn(x), attn.out_projection(y))


@pytest.mark.parametrize("attention", ["flow", "softmax"])
def test_trunk_incremental_state_equals_full_pass(attention):
    torch.manual_seed(0)
    cfg = FlowformerConfig(dim=16, depth=2, heads=2, attention=attention, causal=True, dropout=0.0)
    model = Flowformer(cfg).double().eval()
    x = torch.randn(2, 23, 16, dtype=torch.float64)
    full = model(x)
    y1, state = model(x[:, :10], return_state=True)
    ys = [y1]
    for t in range(10, 23):
        y, state = model(x[:, t : t + 1], state=state, return_state=True)
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=1), full)


@pytest.mark.parametrize("attention", ["flow", "softmax"])
@pytest.mark.parametrize("select", [slice(1, None, 3), slice(-1, None), "index"], ids=["every3", "last", "index"])
def test_trunk_select_equals_full_pass_then_slice(attention, select):
    torch.manual_seed(0)
    cfg = FlowformerConfig(dim=16, depth=3, heads=2, attention=attention, causal=True, dropout=0.0)
    model = Flowformer(cfg).double().eval()
    x = torch.randn(2, 23, 16, dtype=torch.float64, requires_grad=True)
    sel = torch.tensor([0, 4, 5, 22]) if select == "index" else select
    full = model(x)
    want = full[:, sel] if isinstance(sel, slice) else full.index_select(1, sel)
    got = model(x, select=sel)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    (gx_want,) = torch.autograd.grad(want, x, g)
    (gx_got,) = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(gx_got, gx_want)
    # with a carried state, select applies to the new tokens only
    _, state = model(x[:, :10], return_state=True)
    tail, _ = model(x[:, 10:], state=state, return_state=True, select=slice(-1, None))
    torch.testing.assert_close(tail[:, 0], full[:, -1])


def test_dropout_rate_scale_and_reproducibility(kernel):
    x = torch.ones(64, 60, 128, requires_grad=True)
    drop = Dropout(0.1)
    torch.manual_seed(3)
    y = drop(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.1) < 0.003  # 491,520 draws: std of the rate ~4e-4
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.9))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, y.detach())  # d(x * mask * scale)/dx = mask * scale
    torch.manual_seed(3)
    assert torch.equal(drop(x), y)
    assert not torch.equal(drop(x), y)  # a fresh mask on the next call
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0)(x) is x
    assert drop(x.detach().bfloat16()).dtype == torch.bfloat16
    for dtype in (torch.bfloat16, torch.float64):  # other dtypes: the same mask rule and scale, same gradient rule
        xd = torch.randn(1001, dtype=dtype, requires_grad=True)  # not a multiple of 4 (the mask's word count)
        yd = drop.train()(xd)
        keep = yd != 0
        torch.testing.assert_close(yd[keep], (xd * (1 / 0.9)).to(dtype)[keep])
        (gd,) = torch.autograd.grad((yd * 2).sum(), xd)
        torch.testing.assert_close(gd, keep.to(dtype) * 2 * (1 / 0.9))
    drop.eval()
    # the mask's 16-bit words are uniform: every rate is hit, not only multiples of 1/4
    for p in (0.01, 0.25, 0.5, 0.9):
        assert abs(1 - keep_mask((200_000,), p).float().mean().item() - p) < 0.005
        assert abs((Dropout(p)(torch.ones(200_000)) == 0).float().mean().item() - p) < 0.005
    with pytest.raises(ValueError, match="p must be in"):
        Dropout(1.0)


@pytest.mark.parametrize("attention", ["flow", "softmax"])
def test_trunk_causality(attention):
    torch.manual_seed(0)
    model = Flowformer(FlowformerConfig(dim=16, depth=2, heads=2, attention=attention, causal=True, dropout=0.0)).eval()
    x = torch.randn(1, 30, 16)
    x2 = x.clone()
    x2[:, 12:] += torch.randn_like(x2[:, 12:])
    torch.testing.assert_close(model(x2)[:, :12], model(x)[:, :12])


@pytest.mark.parametrize("attention", ["flow", "softmax"])
def test_trunk_padding_does_not_leak(attention):
    torch.manual_seed(0)
    model = Flowformer(FlowformerConfig(dim=16, depth=2, heads=2, attention=attention, dropout=0.0)).eval()
    x = torch.randn(2, 12, 16)
    pad = torch.zeros(2, 12, dtype=torch.bool)
    pad[1, 7:] = True
    y = model(x, padding_mask=pad)
    x2 = x.clone()
    x2[1, 7:] = 100.0
    torch.testing.assert_close(model(x2, padding_mask=pad)[1, :7], y[1, :7])
    torch.testing.assert_close(y[1:, :7], model(x[1:, :7]), rtol=1e-5, atol=1e-5)


def test_config_json_round_trip_and_validation(tmp_path):
    cfg = FlowformerConfig(dim=32, depth=2, heads=4, attention="softmax", causal=True, clamp=10.0)
    assert FlowformerConfig.from_json(cfg.to_json()) == cfg
    cfg.save(tmp_path / "c.json")
    assert FlowformerConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match=r"heads must divide dim \(got heads=3, dim=32\)"):
        FlowformerConfig(dim=32, heads=3)
    with pytest.raises(ValueError, match="attention must be 'flow' or 'softmax'"):
        FlowformerConfig(attention="linear")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['dimm'\]"):
        FlowformerConfig.from_dict({"dimm": 3})


def test_layer_input_errors():
    with pytest.raises(ValueError, match="dim=10 is not divisible by heads=3"):
        FlowAttention(10, 3)
    attn = FlowAttention(8, 2, causal=True)
    with pytest.raises(ValueError, match=r"x has shape \(2, 5, 7\), expected \[B, L, 8\]"):
        attn(torch.randn(2, 5, 7))
    with pytest.raises(ValueError, match="pad causal inputs on the right"):
        attn(torch.randn(2, 5, 8), padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    model = Flowformer(FlowformerConfig(dim=8, depth=2, heads=2, causal=True))
    with pytest.raises(ValueError, match="state has 1 layers, expected 2"):
        model(torch.randn(1, 3, 8), state=[None])


def test_position_embeddings():
    pe = LearnedPositionEmbedding(10, 4)
    assert pe(torch.arange(10)).shape == (10, 4)
    with pytest.raises(ValueError, match="position 10 is outside the learned table of 10 positions"):
        pe(torch.arange(11))
    sin = SinusoidalPositionEmbedding(7)
    out = sin(torch.arange(5000))
    assert out.shape == (5000, 7) and torch.isfinite(out).all()
    torch.testing.assert_close(out[0, :3], torch.zeros(3))  # sin(0) = 0


def test_backbone_imports_no_rl_package():
    code = (
        "import sys, flowrl, flowrl.ops, flowrl.layers, flowrl.models\n"
        "rl = ('gymnasium', 'minari', 'stable_baselines3', 'h5py', 'flowrl.envs', 'flowrl.agents')\n"
        "bad = [m for m in rl if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
