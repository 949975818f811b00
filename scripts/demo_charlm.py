"""Character-level language model (CausalLM) on Python's own docstrings: flow vs softmax attention.

    python -m flowrl.scripts.demo_charlm [--attention flow|softmax|both] [--steps N]

The text ships with Python: the docstrings of a fixed list of standard-library modules and of their
public classes, methods and functions (about 260k characters; the exact text depends on the Python
version), reduced to printable ASCII. The first 90% trains, the last 10% validates.

Reported per attention: validation perplexity per character (and bits per character) at the training
context length, training time, and the cost of ``generate()`` per new token after a long prompt, with
the recurrent state (flow: constant-size state; softmax: KV cache) and by recomputing the whole prefix
at every step. Greedy decoding gives the same tokens both ways; the table says whether it did.
``--decode-lengths 256 1024 4096 16384`` times decoding alone at several prompt lengths instead: constant
per token for flow (its state has a fixed size), growing with the prompt for softmax (the KV cache).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import string
import time
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from flowrl.scripts.demo_common import demo_parser, num_params, print_table, setup, train_model, trunk_config

from flowrl.models import CausalLM, CausalLMConfig

MODULES = (
    "argparse", "collections", "json", "textwrap", "string", "difflib", "functools", "pathlib", "subprocess",
    "logging", "unittest.case", "dataclasses", "inspect", "shutil", "tempfile", "csv", "random",
    "statistics", "fractions", "decimal", "datetime", "calendar", "heapq", "bisect", "email.message",
    "http.client", "urllib.parse", "zipfile", "tarfile", "pickle", "threading", "asyncio.tasks", "contextlib",
    "enum", "abc", "ast",
)  # fmt: skip
ALPHABET = "\n" + "".join(c for c in string.printable if c not in "\r\x0b\x0c\t\n")


def _public(namespace: Mapping[str, Any], keep) -> list:
    return [v for k, v in sorted(namespace.items()) if not k.startswith("_") and keep(v)]


def docstring_corpus() -> str:
    """The docstrings of MODULES and their public members, deduplicated, in printable ASCII."""
    docs, seen = [], set()
    for name in MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:  # a module that this Python version no longer has
            continue
        owned = lambda v, m=module: (inspect.isclass(v) or inspect.isfunction(v)) and v.__module__ == m.__name__  # noqa: E731
        for obj in [module, *_public(vars(module), owned)]:
            methods = _public(vars(obj), inspect.isfunction) if inspect.isclass(obj) else []
            for item in (obj, *methods):
                doc = inspect.getdoc(item)
                if doc and doc not in seen:
                    seen.add(doc)
                    docs.append(doc)
    text = "\n\n".join(docs).replace("\t", "    ")
    allowed = set(ALPHABET)
    return "".join(c for c in text if c in allowed)


def encode(text: str) -> torch.Tensor:
    index = {c: i for i, c in enumerate(ALPHABET)}
    return torch.tensor([index[c] for c in text], dtype=torch.long)


def decode(ids) -> str:
    return "".join(ALPHABET[i] for i in ids)


def evaluate(model: CausalLM, data: torch.Tensor, context: int) -> float:
    """Mean next-character cross-entropy (nats) over non-overlapping windows of ``context``."""
    n = (len(data) - 1) // context
    x = data[: n * context].view(n, context)
    y = data[1 : n * context + 1].view(n, context)
    total: torch.Tensor | float = 0.0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, 64):
            logits = model(x[i : i + 64])
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[i : i + 64].reshape(-1), reduction="sum")
    return float(total) / (n * context)


def time_generation(model: CausalLM, prompt: torch.Tensor, new: int, use_state: bool) -> tuple[torch.Tensor, float]:
    """Greedy continuation and the wall time per new token in milliseconds."""
    start = time.perf_counter()
    out = model.generate(prompt, new, greedy=True, use_state=use_state)
    return out, 1000 * (time.perf_counter() - start) / max(new, 1)


def make_model(attention: str, args) -> CausalLM:
    torch.manual_seed(args.seed)
    config = CausalLMConfig(
        vocab_size=len(ALPHABET),
        positions="sinusoidal",
        trunk=trunk_config(attention, args, causal=True),
    )
    return CausalLM(config)


def decode_cost(attention: str, args) -> list[dict]:
    """Prefill time and per-token decoding time with the state, at each of ``args.decode_lengths``.

    Untrained weights and random prompts: the cost does not depend on either.
    """
    model = make_model(attention, args).eval()
    rows = []
    with torch.no_grad():
        for length in args.decode_lengths:
            prompt = torch.randint(0, len(ALPHABET), (1, length))
            start = time.perf_counter()
            _, state = model(prompt, return_state=True)
            prefill = time.perf_counter() - start
            token = prompt[:, -1:]
            start = time.perf_counter()
            for _ in range(args.new_tokens):
                _, state = model(token, state=state, return_state=True)
            per_token = 1000 * (time.perf_counter() - start) / max(args.new_tokens, 1)
            rows.append({"attention": attention, "context": length, "prefill_s": prefill, "decode_ms": per_token})
    return rows


def train_and_evaluate(attention: str, train: torch.Tensor, val: torch.Tensor, args) -> dict:
    model = make_model(attention, args)
    offsets = torch.arange(args.context + 1)

    def loss(gen: torch.Generator) -> torch.Tensor:
        starts = torch.randint(0, len(train) - args.context - 1, (args.batch_size, 1), generator=gen)
        chunk = train[starts + offsets]  # (B, context + 1)
        logits = model(chunk[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1))

    gen = torch.Generator().manual_seed(args.seed)  # drawn from again below, for the sample
    train_s = train_model(model, loss, args, clip_norm=1.0, generator=gen)
    val_loss = evaluate(model, val, args.context)

    prompt = val[: args.prompt_len][None]
    with_state, state_ms = time_generation(model, prompt, args.new_tokens, use_state=True)
    recomputed, recompute_ms = time_generation(model, prompt, args.new_tokens, use_state=False)
    sample = model.generate(val[: args.context][None], 200, temperature=0.8, top_k=10, generator=gen)
    return {
        "attention": attention,
        "params": num_params(model),
        "train_s": train_s,
        "val_ppl": math.exp(val_loss),
        "val_bpc": val_loss / math.log(2),
        "state_ms": state_ms,
        "recompute_ms": recompute_ms,
        "same": "yes" if torch.equal(with_state, recomputed) else "no",
        "sample": decode(sample[0, args.context :].tolist()),
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = demo_parser("demo_charlm", __doc__, steps=500, batch_size=32, lr=3e-3, dim=128)
    p.add_argument("--context", type=int, default=128, help="training context length in characters")
    p.add_argument("--prompt-len", type=int, default=1024, help="generation timing: prompt length")
    p.add_argument("--new-tokens", type=int, default=128, help="generation timing: tokens generated")
    p.add_argument(
        "--decode-lengths",
        type=int,
        nargs="+",
        metavar="L",
        help="instead of training: time prefill and per-token decoding (--new-tokens steps) after prompts of "
        "these lengths, untrained weights (e.g. 256 1024 4096 16384)",
    )
    args = p.parse_args(argv)
    if args.decode_lengths and min(args.decode_lengths) < 1:
        p.error("--decode-lengths must be >= 1")
    if args.steps < 0 or args.context < 1 or args.prompt_len < 1 or args.new_tokens < 0:
        p.error("--steps and --new-tokens must be >= 0, --context and --prompt-len >= 1")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    attentions = setup(args)
    if args.decode_lengths:
        rows = [row for a in attentions for row in decode_cost(a, args)]
        print_table(
            rows,
            [
                ("attention", "attention", "s"),
                ("context", "prompt length", "d"),
                ("prefill_s", "prefill [s]", ".2f"),
                ("decode_ms", f"decode with state [ms/token, {args.new_tokens} tokens]", ".1f"),
            ],
        )
        return rows
    data = encode(docstring_corpus())
    split = int(0.9 * len(data))
    train, val = data[:split], data[split:]
    if len(val) < max(args.prompt_len, args.context) + 1:
        raise SystemExit(f"the validation text ({len(val)} characters) is shorter than --prompt-len/--context")
    print(
        f"char LM on {len(MODULES)} stdlib modules' docstrings: {len(train):,} train / {len(val):,} validation "
        f"characters, {len(ALPHABET)} symbols; context {args.context}"
    )
    rows = [train_and_evaluate(a, train, val, args) for a in attentions]
    print_table(
        rows,
        [
            ("attention", "attention", "s"),
            ("params", "params", ","),
            ("val_ppl", "val perplexity / char", ".2f"),
            ("val_bpc", "bits / char", ".2f"),
            ("train_s", f"train time ({args.steps} steps) [s]", ".1f"),
            ("state_ms", f"generate, state [ms/token @ {args.prompt_len}+]", ".1f"),
            ("recompute_ms", "generate, recompute [ms/token]", ".1f"),
            ("same", "same greedy tokens", "s"),
        ],
    )
    for row in rows:
        print(f"\n{row['attention']} sample (temperature 0.8, top-k 10):\n{row['sample']}")
    return rows


if __name__ == "__main__":
    main()
