"""The fast Flow-Attention op against its naive twin, and the invariants it must keep."""

from __future__ import annotations

import pytest
import torch

from flowrl.ops import FlowState, flow_attention, state_updates_in_place
from flowrl.ops.naive import flow_attention_causal_materialized, flow_attention_naive

# (B, H, L, D, M, chunk): lengths that fill and that do not fill the last chunk, D != M
GRID = [
    (1, 1, 1, 16, 24, 64),
    (7, 1, 7, 16, 24, 64),
    (1, 7, 60, 16, 24, 64),
    (2, 3, 257, 16, 24, 64),
    (1, 2, 1024, 16, 24, 64),
    (1, 2, 1024, 16, 24, 100),
    (2, 1, 257, 8, 12, 16),
]


def _ids(case):
    B, H, L, D, M, C = case
    return f"B{B}-H{H}-L{L}-D{D}-M{M}-C{C}"


def _qkv(B, H, L, D, M, *, S=None, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    S = L if S is None else S
    q = torch.randn(B, H, L, D, generator=g, dtype=dtype)
    k = torch.randn(B, H, S, D, generator=g, dtype=dtype)
    v = torch.randn(B, H, S, M, generator=g, dtype=dtype)
    return [x.requires_grad_(requires_grad) for x in (q, k, v)]


@pytest.mark.parametrize("clamp", [1.0, 10.0], ids=["c1", "c10"])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_fast_equals_naive_forward_backward(case, causal, clamp):
    B, H, L, D, M, chunk = case
    q, k, v = _qkv(B, H, L, D, M, requires_grad=True)
    y = flow_attention(q, k, v, causal=causal, clamp=clamp, chunk=chunk)
    y_ref = flow_attention_naive(q, k, v, causal=causal, clamp=clamp)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(y)
    grads = torch.autograd.grad(y, (q, k, v), grad_out)
    grads_ref = torch.autograd.grad(y_ref, (q, k, v), grad_out)
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-10)


def test_clamp_binds_and_matters():
    # with random inputs about half of the conserved sources exceed 1: the clamp must be kept exactly
    q, k, v = _qkv(2, 2, 128, 16, 16)
    y1 = flow_attention(q, k, v, causal=True, clamp=1.0)
    y10 = flow_attention(q, k, v, causal=True, clamp=10.0)
    assert (y1 - y10).abs().max() > 1e-3


def test_noncausal_cross_attention_lengths_differ():
    q, k, v = _qkv(2, 3, 33, 8, 5, S=71)
    torch.testing.assert_close(flow_attention(q, k, v), flow_attention_naive(q, k, v), rtol=1e-10, atol=1e-10)


def test_materialized_reference_form_agrees():
    q, k, v = _qkv(2, 2, 90, 8, 6)
    for clamp in (1.0, 10.0):
        torch.testing.assert_close(
            flow_attention(q, k, v, causal=True, clamp=clamp),
            flow_attention_causal_materialized(q, k, v, clamp=clamp),
            rtol=1e-10,
            atol=1e-10,
        )


@pytest.mark.parametrize("t", [0, 1, 63, 64, 100, 198])
def test_causality(t):
    q, k, v = _qkv(2, 2, 200, 8, 8)
    y = flow_attention(q, k, v, causal=True, chunk=64)
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    for x in (q2, k2, v2):
        x[:, :, t + 1 :] = torch.randn_like(x[:, :, t + 1 :]) * 3
    y2 = flow_attention(q2, k2, v2, causal=True, chunk=64)
    torch.testing.assert_close(y2[:, :, : t + 1], y[:, :, : t + 1], rtol=0, atol=1e-12)
    if t + 1 < 200:
        assert (y2[:, :, t + 1 :] - y[:, :, t + 1 :]).abs().max() > 1e-6


@pytest.mark.parametrize("split", [0, 1, 5, 64, 65, 130, 134, 145, 148, 149, 150])  # 2-16 left: the short path
def test_state_carry_split_anywhere(split):
    q, k, v = _qkv(2, 3, 150, 8, 5)
    full = flow_attention(q, k, v, causal=True, clamp=10.0)
    y1, s = flow_attention(
        q[:, :, :split], k[:, :, :split], v[:, :, :split], causal=True, clamp=10.0, return_state=True
    )
    y2 = flow_attention(q[:, :, split:], k[:, :, split:], v[:, :, split:], causal=True, clamp=10.0, state=s)
    torch.testing.assert_close(torch.cat([y1, y2], dim=2), full, rtol=1e-10, atol=1e-10)


def test_state_one_token_at_a_time_and_final_state():
    q, k, v = _qkv(3, 2, 70, 8, 6)
    full, s_full = flow_attention(q, k, v, causal=True, return_state=True)
    s, ys = None, []
    for t in range(70):
        y, s = flow_attention(
            q[:, :, t : t + 1], k[:, :, t : t + 1], v[:, :, t : t + 1], causal=True, state=s, return_state=True
        )
        ys.append(y)
    torch.testing.assert_close(torch.cat(ys, dim=2), full, rtol=1e-10, atol=1e-10)
    for a, b in zip(s, s_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert s.kv.shape == (3, 2, 8, 6) and s.t.tolist() == [70, 70, 70]  # O(D·M) state, constant in L


@pytest.mark.parametrize("step", [1, 3], ids=["one-token", "three-tokens"])
def test_state_updates_in_place_give_the_same_outputs_and_consume_the_old_state(step):
    q, k, v = _qkv(2, 2, 30, 8, 6)
    full, s_full = flow_attention(q, k, v, causal=True, return_state=True)
    _, s = flow_attention(q[:, :, :6], k[:, :, :6], v[:, :, :6], causal=True, return_state=True)
    ys, kv_storage = [], s.kv.data_ptr()
    with torch.no_grad(), state_updates_in_place():
        for t in range(6, 30, step):
            sl = slice(t, t + step)
            y, s = flow_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], causal=True, state=s, return_state=True)
            ys.append(y)
    assert s.kv.data_ptr() == kv_storage  # one D×M buffer all along
    torch.testing.assert_close(torch.cat(ys, dim=2), full[:, :, 6:], rtol=1e-10, atol=1e-10)
    for a, b in zip(s, s_full):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    # outside the block, states are values again: continuing does not touch the given state
    before = s.kv.clone()
    flow_attention(q[:, :, :1], k[:, :, :1], v[:, :, :1], causal=True, state=s, return_state=True)
    assert torch.equal(s.kv, before)


def test_state_rows_reset_independently():
    q, k, v = _qkv(3, 2, 40, 8, 6)
    _, s = flow_attention(q[:, :, :25], k[:, :, :25], v[:, :, :25], causal=True, return_state=True)
    s = s.reset(torch.tensor([False, True, False]))
    y = flow_attention(q[:, :, 25:], k[:, :, 25:], v[:, :, 25:], causal=True, state=s)
    fresh = flow_attention(q[1:2, :, 25:], k[1:2, :, 25:], v[1:2, :, 25:], causal=True)
    cont = flow_attention(q[[0, 2]], k[[0, 2]], v[[0, 2]], causal=True)[:, :, 25:]
    torch.testing.assert_close(y[1:2], fresh, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y[[0, 2]], cont, rtol=1e-10, atol=1e-10)


def test_key_padding_padded_positions_do_not_change_others():
    B, H, L, D, M = 3, 2, 30, 8, 6
    q, k, v = _qkv(B, H, L, D, M)
    lengths = torch.tensor([30, 17, 4])
    pad = torch.arange(L)[None, :] >= lengths[:, None]  # True = padding
    y = flow_attention(q, k, v, key_padding_mask=pad, query_padding_mask=pad)
    torch.testing.assert_close(
        y, flow_attention_naive(q, k, v, key_padding_mask=pad, query_padding_mask=pad), rtol=1e-10, atol=1e-10
    )
    q2, k2, v2 = (x.clone() for x in (q, k, v))
    padded = pad[:, None, :, None].expand_as(q)
    for x in (q2, k2, v2):
        x.copy_(torch.where(padded[..., : x.shape[-1]], torch.randn_like(x) * 5, x))
    y2 = flow_attention(q2, k2, v2, key_padding_mask=pad, query_padding_mask=pad)
    torch.testing.assert_close(y2, y, rtol=0, atol=1e-12)
    # each row equals attention over its unpadded prefix alone
    for b, n in enumerate(lengths.tolist()):
        alone = flow_attention(q[b : b + 1, :, :n], k[b : b + 1, :, :n], v[b : b + 1, :, :n])
        torch.testing.assert_close(y[b : b + 1, :, :n], alone, rtol=1e-10, atol=1e-10)
    assert y[1, :, 17:].abs().max() == 0


def test_key_padding_only_keys_cross_attention():
    q, k, v = _qkv(2, 2, 9, 8, 6, S=20)
    pad = torch.zeros(2, 20, dtype=torch.bool)
    pad[1, 12:] = True
    y = flow_attention(q, k, v, key_padding_mask=pad)
    torch.testing.assert_close(y, flow_attention_naive(q, k, v, key_padding_mask=pad), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y[1:], flow_attention(q[1:], k[1:, :, :12], v[1:, :, :12]), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_bfloat16_finite_outputs_and_gradients(causal):
    q, k, v = (x.to(torch.bfloat16).requires_grad_() for x in _qkv(2, 2, 300, 16, 16, dtype=torch.float32))
    y = flow_attention(q, k, v, causal=causal, clamp=10.0)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y.float().square().mean().backward()
    for x in (q, k, v):
        assert torch.isfinite(x.grad).all()
    ref = flow_attention_naive(*(x.detach().double() for x in (q, k, v)), causal=causal, clamp=10.0)
    torch.testing.assert_close(y.double(), ref, rtol=0.05, atol=0.05)


def test_bfloat16_autocast_keeps_scans_in_float32():
    q, k, v = _qkv(1, 2, 2048, 16, 16, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = flow_attention(q, k, v, causal=True, clamp=10.0)
    ref = flow_attention(q, k, v, causal=True, clamp=10.0)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), ref, rtol=0.05, atol=0.02)


def test_long_causal_sequence_linear_memory():
    # L = 65,536 with D = M = 64: the materialised reference form would need an L·D·M tensor (1 GiB in
    # float32, several kept for backward); the chunked scan needs O(L·(D + M + chunk)).
    q, k, v = (x.requires_grad_() for x in _qkv(1, 1, 65536, 64, 64, dtype=torch.float32))
    y = flow_attention(q, k, v, causal=True)
    assert y.shape == (1, 1, 65536, 64) and torch.isfinite(y).all()
    y.sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))
    # the tail agrees with a state-carried continuation of the head
    _, s = flow_attention(
        q[:, :, :65000].detach(), k[:, :, :65000].detach(), v[:, :, :65000].detach(), causal=True, return_state=True
    )
    tail = flow_attention(
        q[:, :, 65000:].detach(), k[:, :, 65000:].detach(), v[:, :, 65000:].detach(), causal=True, state=s
    )
    torch.testing.assert_close(tail, y[:, :, 65000:].detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.randn(2, 3, 8), torch.randn(2, 3, 8), torch.randn(2, 3, 8)), r"q has shape \(2, 3, 8\)"),
        (
            lambda: (torch.randn(2, 3, 8, 4), torch.randn(2, 2, 8, 4), torch.randn(2, 2, 8, 4)),
            r"k has shape \(2, 2, 8, 4\), expected \[2, 3, S, 4\]",
        ),
        (
            lambda: (torch.randn(2, 3, 8, 4), torch.randn(2, 3, 8, 5), torch.randn(2, 3, 8, 4)),
            r"k has shape .*expected \[2, 3, S, 4\]",
        ),
        (
            lambda: (torch.randn(2, 3, 8, 4), torch.randn(2, 3, 8, 4), torch.randn(2, 3, 7, 4)),
            r"v has shape \(2, 3, 7, 4\)",
        ),
    ],
)
def test_bad_shapes_name_received_and_expected(make, match):
    with pytest.raises(ValueError, match=match):
        flow_attention(*make())


def test_bad_masks_states_and_options():
    q, k, v = _qkv(2, 3, 8, 4, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"key_padding_mask has shape \(2, 9\).*expected.*\(2, 8\)"):
        flow_attention(q, k, v, key_padding_mask=torch.zeros(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool"):
        flow_attention(q, k, v, key_padding_mask=torch.zeros(2, 8))
    with pytest.raises(ValueError, match="pad on the right"):
        flow_attention(q, k, v, causal=True, key_padding_mask=torch.zeros(2, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="causal attention needs S == L"):
        flow_attention(q, k[:, :, :5], v[:, :, :5], causal=True)
    wrong = FlowState.zeros(2, 3, 4, 5)
    with pytest.raises(ValueError, match=r"state.kv has shape \(2, 3, 4, 5\), expected \(2, 3, 4, 4\)"):
        flow_attention(q, k, v, causal=True, state=wrong)
    with pytest.raises(ValueError, match="need causal=True"):
        flow_attention(q, k, v, return_state=True)
    with pytest.raises(ValueError, match="clamp"):
        flow_attention(q, k, v, clamp=0.0)
