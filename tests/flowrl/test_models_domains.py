"""Domain wrappers: shapes, masks, learning a tiny task, generate() vs recomputation, save/load, bad input."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from flowrl.models import (
    CausalLM,
    CausalLMConfig,
    FlowformerConfig,
    ImageClassifier,
    ImageClassifierConfig,
    SequenceClassifier,
    SequenceClassifierConfig,
    TimeSeriesClassifier,
    TimeSeriesClassifierConfig,
    load_model,
    save_model,
)

ATTENTIONS = ["flow", "softmax"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are overhead-bound: one thread is faster, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def trunk(attention: str = "flow", *, causal: bool = False, dim: int = 16, depth: int = 1, **kw) -> FlowformerConfig:
    return FlowformerConfig(dim=dim, depth=depth, heads=2, attention=attention, causal=causal, dropout=0.0, **kw)


def seq_model(attention="flow", **kw) -> SequenceClassifier:
    kw.setdefault("pad_id", 0)
    return SequenceClassifier(SequenceClassifierConfig(vocab_size=12, num_classes=3, trunk=trunk(attention), **kw))


def ts_model(attention="flow", **kw) -> TimeSeriesClassifier:
    return TimeSeriesClassifier(TimeSeriesClassifierConfig(in_channels=3, num_classes=4, trunk=trunk(attention), **kw))


def img_model(attention="flow", **kw) -> ImageClassifier:
    kw.setdefault("image_size", 8)
    kw.setdefault("patch_size", 2)
    kw.setdefault("in_channels", 1)
    return ImageClassifier(ImageClassifierConfig(num_classes=4, trunk=trunk(attention), **kw))


def lm_model(attention="flow", **kw) -> CausalLM:
    t = kw.pop("trunk", None) or trunk(attention, causal=True, chunk=4)
    return CausalLM(CausalLMConfig(vocab_size=11, trunk=t, **kw))


# --- shapes and masks ---


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_sequence_padding_changes_nothing(attention, pooling, positions):
    torch.manual_seed(0)
    model = seq_model(attention, pooling=pooling, positions=positions).eval()
    ids = torch.randint(1, 12, (3, 9))
    ref = model(ids)
    assert ref.shape == (3, 3)
    # pad with pad_id (different amounts per call): same logits
    for extra in (1, 5):
        padded = torch.cat([ids, torch.zeros(3, extra, dtype=torch.long)], dim=1)
        torch.testing.assert_close(model(padded), ref, atol=1e-5, rtol=1e-5)
    # explicit mask: whatever tokens sit under it do not matter, and pad_id is not needed
    junk = torch.cat([ids, torch.randint(1, 12, (3, 4))], dim=1)
    mask = torch.zeros(3, 13, dtype=torch.bool)
    mask[:, 9:] = True
    torch.testing.assert_close(model(junk, padding_mask=mask), ref, atol=1e-5, rtol=1e-5)
    # rows are independent: different lengths in one batch give each row its own unpadded result
    short = ids[1:2, :4]
    batch = ids.clone()
    batch[1, 4:] = 0
    torch.testing.assert_close(model(batch)[1], model(short)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_sequence_pair_mode(attention):
    torch.manual_seed(0)
    model = seq_model(attention, pair=True, head_hidden=8).eval()
    a, b = torch.randint(1, 12, (2, 7)), torch.randint(1, 12, (2, 5))
    out = model(a, b)
    assert out.shape == (2, 3)
    padded_b = torch.cat([b, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    torch.testing.assert_close(model(a, padded_b), out, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model(b, a), out)  # [u, v, u·v, u−v] is ordered
    with pytest.raises(ValueError, match="second sequence"):
        model(a)
    with pytest.raises(ValueError, match="one sequence"):
        seq_model(attention)(a, b)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_time_series_lengths_and_masks(attention, pooling):
    torch.manual_seed(0)
    model = ts_model(attention, pooling=pooling).eval()
    x = torch.randn(2, 10, 3)
    lengths = torch.tensor([10, 6])
    out = model(x, lengths=lengths)
    assert out.shape == (2, 4)
    x_nan = x.clone()
    x_nan[1, 6:] = float("nan")  # UEA files pad short series with NaN
    mask = torch.arange(10)[None] >= lengths[:, None]
    torch.testing.assert_close(model(x_nan, padding_mask=mask), out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x[1:, :6])[0], out[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x[:1])[0], out[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_image_shapes(attention, pooling):
    model = img_model(attention, pooling=pooling)
    assert model(torch.randn(5, 1, 8, 8)).shape == (5, 4)
    rect = img_model(attention, image_size=(4, 8), in_channels=3, pooling=pooling)
    assert rect(torch.randn(2, 3, 4, 8)).shape == (2, 4)
    assert rect.encoder.trunk is not None and rect.config.grid == (2, 4)


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_lm_is_causal_and_state_continues(attention):
    torch.manual_seed(0)
    model = lm_model(attention).eval()
    ids = torch.randint(0, 11, (2, 13))
    logits = model(ids)
    assert logits.shape == (2, 13, 11)
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 11
    torch.testing.assert_close(model(changed)[:, :7], logits[:, :7])
    assert not torch.allclose(model(changed)[:, 7:], logits[:, 7:])
    first, state = model(ids[:, :6], return_state=True)
    rest = model(ids[:, 6:], state=state)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), logits, atol=1e-5, rtol=1e-4)


# --- learning a tiny task ---


def _fit(model, batch_fn, steps: int, lr: float = 3e-3):
    """Train with Adam on fresh batches; returns (mean loss of the first 10 steps, of the last 10)."""
    torch.manual_seed(1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    model.train()
    for _ in range(steps):
        inputs, kwargs, y = batch_fn()
        logits = model(*inputs, **kwargs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    return sum(losses[:10]) / 10, sum(losses[-10:]) / 10


def _accuracy(model, batch_fn) -> float:
    with torch.no_grad():
        inputs, kwargs, y = batch_fn()
        return (model(*inputs, **kwargs).argmax(-1) == y).float().mean().item()


def _majority_batch(n=64):
    """Variable-length token sequences; class = which of 3 token groups is most frequent."""
    lengths = torch.randint(6, 17, (n,))
    ids = torch.randint(1, 10, (n, 16))
    ids[torch.arange(16)[None] >= lengths[:, None]] = 0
    groups = (ids - 1) // 3  # tokens 1-3 -> 0, 4-6 -> 1, 7-9 -> 2
    counts = torch.stack([((groups == g) & (ids > 0)).sum(1) for g in range(3)], dim=1)
    y = (counts + 0.1 * torch.arange(3)).argmax(1)  # ties broken towards the higher group
    return (ids,), {}, y


def _offset_batch(n=64):
    """Noisy 3-channel series, lengths 8..24 (NaN padded); class = signs of the means of channels 0 and 1."""
    y = torch.randint(0, 4, (n,))
    signs = torch.stack([y % 2, y // 2, torch.zeros_like(y)], dim=1).float() * 2 - 1
    x = 0.7 * signs[:, None, :] + torch.randn(n, 24, 3)
    lengths = torch.randint(8, 25, (n,))
    x[torch.arange(24)[None] >= lengths[:, None]] = float("nan")
    return (x,), {"lengths": lengths}, y


def _quadrant_batch(n=64):
    """8x8 noise images with one bright 4x4 quadrant; class = which quadrant."""
    y = torch.randint(0, 4, (n,))
    x = 0.5 * torch.randn(n, 1, 8, 8)
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 1.0
    return (x,), {}, y


def _cycle_batch(n=32, L=16):
    """Each row counts up modulo 11 from a random start: the next token is always predictable."""
    ids = (torch.randint(0, 11, (n, 1)) + torch.arange(L + 1)[None]) % 11
    return (ids[:, :-1],), {}, ids[:, 1:]


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize(
    "name, make, batch_fn, steps, chance",
    [
        ("sequence", lambda a: seq_model(a, positions="sinusoidal"), _majority_batch, 150, 1 / 3),
        ("time_series", lambda a: ts_model(a), _offset_batch, 100, 1 / 4),
        ("image", lambda a: img_model(a), _quadrant_batch, 100, 1 / 4),
        ("lm", lambda a: lm_model(a), _cycle_batch, 80, 1 / 11),
    ],
    ids=["sequence", "time_series", "image", "lm"],
)
def test_wrapper_learns_a_tiny_task(attention, name, make, batch_fn, steps, chance):
    torch.manual_seed(0)
    model = make(attention)
    first, last = _fit(model, batch_fn, steps)
    acc = _accuracy(model, lambda: batch_fn(256))
    assert last < 0.6 * first, f"{name}/{attention}: loss {first:.3f} -> {last:.3f}"
    assert acc > max(0.75, 2 * chance), f"{name}/{attention}: accuracy {acc:.2f} (chance {chance:.2f})"


# --- generate() ---


def _greedy_by_recomputation(model, prompt, n):
    ids = prompt
    for _ in range(n):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
    return ids


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_generate_with_state_matches_recomputation(attention, positions):
    torch.manual_seed(0)
    # float64 so that no argmax near-tie can flip between the two (mathematically equal) computations
    model = lm_model(attention, positions=positions, max_len=64, trunk=trunk(attention, causal=True, depth=2, chunk=4))
    model = model.double().eval()
    prompt = torch.randint(0, 11, (3, 9))  # longer than one chunk of the causal scan
    out = model.generate(prompt, 30, greedy=True)
    assert out.shape == (3, 39) and torch.equal(out[:, :9], prompt)
    assert torch.equal(out, _greedy_by_recomputation(model, prompt, 30))
    assert torch.equal(out, model.generate(prompt, 30, greedy=True, use_state=False))
    assert torch.equal(out, model.generate(prompt, 30, temperature=0.0))
    assert torch.equal(out, model.generate(prompt, 30, top_k=1))
    # sampling draws the same tokens whether the prefix is carried as state or recomputed
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s1 = model.generate(prompt, 20, temperature=0.8, top_k=5, generator=g1)
    s2 = model.generate(prompt, 20, temperature=0.8, top_k=5, generator=g2, use_state=False)
    assert torch.equal(s1, s2)


def test_generate_prefills_a_long_prompt_in_chunks():
    torch.manual_seed(0)
    model = lm_model("flow", trunk=trunk("flow", causal=True, depth=2)).double().eval()
    prompt = torch.randint(0, 11, (2, 150))  # three decoder calls of at most 64 tokens
    out = model.generate(prompt, 5, greedy=True)
    assert torch.equal(out, model.generate(prompt, 5, greedy=True, use_state=False))


def test_generate_1d_prompt_zero_tokens_and_training_flag():
    model = lm_model().train()
    prompt = torch.tensor([1, 2, 3])
    assert torch.equal(model.generate(prompt, 0), prompt)
    assert model.generate(prompt, 4).shape == (7,)
    assert model.training  # restored after generating in eval mode


def test_generate_sinusoidal_runs_past_training_length_learned_does_not():
    prompt = torch.randint(0, 11, (1, 5))
    assert lm_model(positions="sinusoidal", max_len=8).generate(prompt, 20).shape == (1, 25)
    with pytest.raises(ValueError, match="max_len=8"):
        lm_model(positions="learned", max_len=8).generate(prompt, 20)


# --- save / load ---


@pytest.mark.parametrize(
    "make, inputs",
    [
        (lambda: seq_model(pooling="cls", pair=True, head_hidden=8), lambda: (torch.randint(1, 12, (2, 6)),) * 2),
        (lambda: ts_model("softmax", positions="learned", max_len=32), lambda: (torch.randn(2, 7, 3),)),
        (lambda: img_model("flow", pooling="cls"), lambda: (torch.randn(2, 1, 8, 8),)),
        (lambda: lm_model("softmax", tie_weights=True), lambda: (torch.randint(0, 11, (2, 6)),)),
        (lambda: lm_model("flow", positions="learned", max_len=16), lambda: (torch.randint(0, 11, (2, 6)),)),
    ],
    ids=["sequence_pair", "time_series", "image", "lm_softmax_tied", "lm_flow_learned"],
)
def test_save_load_round_trip(tmp_path, make, inputs):
    torch.manual_seed(0)
    model = make().eval()
    x = inputs()
    save_model(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.pt"]  # no temp files left
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    assert torch.equal(loaded(*x), model(*x))
    assert load_model(tmp_path / "m", type(model)).config == model.config
    # the config alone round-trips through JSON, nested trunk included
    cfg = type(model.config).from_json(model.config.to_json())
    assert cfg == model.config and isinstance(cfg.trunk, FlowformerConfig)


def test_load_errors(tmp_path):
    save_model(img_model(), tmp_path / "img")
    with pytest.raises(ValueError, match="holds a ImageClassifier, not a CausalLM"):
        load_model(tmp_path / "img", CausalLM)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path / "missing")
    meta = json.loads((tmp_path / "img" / "config.json").read_text())
    meta["config"]["trunk"]["dim"] = 32
    (tmp_path / "img" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit its config.json"):
        load_model(tmp_path / "img")
    with pytest.raises(ValueError, match="not one of the domain models"):
        save_model(torch.nn.Linear(2, 2), tmp_path / "lin")


def test_configs_json_round_trip_and_validation():
    cfg = ImageClassifierConfig(num_classes=10, image_size=8, patch_size=2, trunk={"dim": 32, "heads": 4})
    assert cfg.image_size == (8, 8) and cfg.trunk.dim == 32
    assert ImageClassifierConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="causal"):
        CausalLMConfig(vocab_size=5, trunk=FlowformerConfig())
    with pytest.raises(ValueError, match="causal"):
        SequenceClassifierConfig(vocab_size=5, num_classes=2, trunk=FlowformerConfig(causal=True))
    with pytest.raises(ValueError, match="pooling"):
        SequenceClassifierConfig(vocab_size=5, num_classes=2, pooling="max")
    with pytest.raises(ValueError, match="pad_id"):
        SequenceClassifierConfig(vocab_size=5, num_classes=2, pad_id=5)
    with pytest.raises(ValueError, match="unknown field"):
        SequenceClassifierConfig.from_dict({"vocab_size": 5, "num_classes": 2, "trunk": {"width": 3}})


# --- bad input ---


def test_token_ids_out_of_vocabulary():
    for model in (seq_model(), lm_model()):
        V = model.config.vocab_size
        with pytest.raises(ValueError, match=rf"token id {V} is outside the vocabulary \[0, {V - 1}\]"):
            model(torch.tensor([[1, V]]))
        with pytest.raises(ValueError, match=r"token id -1 is outside"):
            model(torch.tensor([[-1, 2]]))
        with pytest.raises(ValueError, match="integer"):
            model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="token id 11"):
        lm_model().generate(torch.tensor([[3, 11]]), 2)


def test_images_not_divisible_by_patch():
    with pytest.raises(ValueError, match="9x9 is not divisible by patch_size=2"):
        ImageClassifierConfig(num_classes=2, image_size=9, patch_size=2)
    model = img_model(positions="sinusoidal")
    with pytest.raises(ValueError, match="image size 10x9 is not divisible by patch_size=2"):
        model(torch.randn(1, 1, 10, 9))
    assert model(torch.randn(1, 1, 10, 6)).shape == (1, 4)  # other sizes are fine without a learned table
    with pytest.raises(ValueError, match="image_size=8x8"):
        img_model(positions="learned")(torch.randn(1, 1, 12, 12))


def test_wrong_channel_counts():
    with pytest.raises(ValueError, match="x has 2 channels, expected in_channels=1"):
        img_model()(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="x has 5 channels, expected in_channels=3"):
        ts_model()(torch.randn(1, 10, 5))


def test_sequences_longer_than_learned_positions():
    with pytest.raises(ValueError, match="length 9 exceeds max_len=8"):
        seq_model(positions="learned", max_len=8)(torch.randint(1, 12, (1, 9)))
    with pytest.raises(ValueError, match="length 9 exceeds max_len=8"):
        seq_model(positions="learned", max_len=8, pooling="cls")(torch.randint(1, 12, (1, 9)))
    assert seq_model(positions="learned", max_len=8, pooling="cls")(torch.randint(1, 12, (1, 8))).shape == (1, 3)
    with pytest.raises(ValueError, match="length 9 exceeds max_len=8"):
        ts_model(positions="learned", max_len=8)(torch.randn(1, 9, 3))
    with pytest.raises(ValueError, match="9 tokens exceeds max_len=8"):
        lm_model(positions="learned", max_len=8)(torch.randint(0, 11, (1, 9)))
    lm = lm_model(positions="learned", max_len=8)
    _, state = lm(torch.randint(0, 11, (1, 6)), return_state=True)
    with pytest.raises(ValueError, match="9 tokens exceeds max_len=8"):
        lm(torch.randint(0, 11, (1, 3)), state=state)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="all padding"):
        seq_model()(torch.tensor([[0, 0, 0], [1, 2, 0]]))
    with pytest.raises(ValueError, match="padding_mask"):
        seq_model()(torch.tensor([[1, 2]]), padding_mask=torch.zeros(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, T=4\]"):
        ts_model()(torch.randn(2, 4, 3), lengths=torch.tensor([4, 5]))
    with pytest.raises(ValueError, match="temperature"):
        lm_model().generate(torch.tensor([[1]]), 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        lm_model().generate(torch.tensor([[1]]), 3, top_k=0)


# --- the demo scripts, on tiny budgets (the real runs are in the README) ---

TINY = ["--steps", "2", "--dim", "16", "--depth", "1", "--heads", "2", "--attention", "both"]


def _check_rows(rows, *keys):
    """One row per attention, the same model size on both sides (a like-for-like table), and numbers in range."""
    assert [r["attention"] for r in rows] == ["flow", "softmax"]
    assert rows[0]["params"] == rows[1]["params"] > 0
    for row in rows:
        for key in keys:
            assert row[key] == row[key] and row[key] >= 0  # a number, not NaN
        if "test_acc" in row:
            assert row["test_acc"] <= 1.0


def test_demo_listops(capsys):
    from flowrl.scripts import demo_listops

    rows = demo_listops.main([*TINY, "--train-size", "64", "--test-size", "32", "--max-len", "40"])
    _check_rows(rows, "test_acc", "train_s")
    assert "| flow |" in capsys.readouterr().out


def test_listops_generator_follows_the_grammar():
    import random

    from flowrl.scripts.demo_listops import sample_expression

    rng = random.Random(0)
    for _ in range(200):
        tokens, value = sample_expression(rng, max_depth=3, max_args=4)
        assert 0 <= value <= 9 and tokens[0].startswith("[") and tokens[-1] == "]"
        assert sum(t.startswith("[") for t in tokens) == tokens.count("]")
    assert sample_expression(random.Random(3), 1, 3)[0][0] in ("[MAX", "[MIN", "[MED", "[SM")


def test_demo_timeseries_synthetic():
    from flowrl.scripts import demo_timeseries

    rows = demo_timeseries.main([*TINY, "--dataset", "synthetic", "--synthetic-size", "32"])
    _check_rows(rows, "test_acc", "train_s")


def test_demo_digits():
    pytest.importorskip("sklearn")
    from flowrl.scripts import demo_digits

    _check_rows(demo_digits.main(TINY), "test_acc", "train_s")


def test_demo_charlm():
    from flowrl.scripts import demo_charlm

    rows = demo_charlm.main([*TINY, "--context", "16", "--prompt-len", "24", "--new-tokens", "4"])
    _check_rows(rows, "val_ppl", "state_ms", "recompute_ms")
    assert all(len(r["sample"]) == 200 for r in rows)
    rows = demo_charlm.main([*TINY, "--decode-lengths", "8", "40", "--new-tokens", "3"])
    assert [(r["attention"], r["context"]) for r in rows] == [(a, n) for a in ("flow", "softmax") for n in (8, 40)]
