"""ListOps (Long Range Arena) with a SequenceClassifier: flow vs softmax attention.

    python -m flowrl.scripts.demo_listops [--attention flow|softmax|both] [--steps N]

The data come from our own generator of the LRA ListOps grammar, at a small depth and length so the demo
runs in CPU minutes (LRA itself uses depth 10, up to 10 arguments and 500-2000 tokens). An expression is
a digit 0-9 or ``[OP a1 ... an ]`` with OP one of MAX, MIN, MED (median; the lower median for an even
count) and SM (sum modulo 10), e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9. The label is the value (10 classes).
"""

from __future__ import annotations

import argparse
import random

import torch
from flowrl.scripts.demo_common import (
    classifier_columns,
    demo_parser,
    print_table,
    setup,
    train_classifier,
    trunk_config,
)

from flowrl.models import SequenceClassifier, SequenceClassifierConfig

OPS = ("[MAX", "[MIN", "[MED", "[SM")
VOCAB = ("<pad>", *(str(d) for d in range(10)), *OPS, "]")
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
PAD = 0


def _evaluate(op: str, args: list[int]) -> int:
    if op == "[MAX":
        return max(args)
    if op == "[MIN":
        return min(args)
    if op == "[MED":
        return sorted(args)[(len(args) - 1) // 2]
    return sum(args) % 10


def sample_expression(rng: random.Random, max_depth: int, max_args: int, leaf_prob: float = 0.6):
    """One random ListOps expression: (tokens, value). The root is always an operator."""

    def node(depth: int):
        if depth > 0 and (depth >= max_depth or rng.random() < leaf_prob):
            d = rng.randrange(10)
            return [str(d)], d
        op = rng.choice(OPS)
        tokens, values = [op], []
        for _ in range(rng.randint(2, max_args)):
            t, v = node(depth + 1)
            tokens += t
            values.append(v)
        return tokens + ["]"], _evaluate(op, values)

    return node(0)


def make_dataset(n: int, *, max_depth: int, max_args: int, max_len: int, seed: int):
    """n expressions of at most max_len tokens: ids [n, max_len] (PAD-padded) and labels [n]."""
    rng = random.Random(seed)
    ids = torch.full((n, max_len), PAD, dtype=torch.long)
    labels = torch.empty(n, dtype=torch.long)
    i = 0
    while i < n:
        tokens, value = sample_expression(rng, max_depth, max_args)
        if len(tokens) > max_len:
            continue
        ids[i, : len(tokens)] = torch.tensor([TOKEN_ID[t] for t in tokens])
        labels[i] = value
        i += 1
    return ids, labels


def trim(ids: torch.Tensor) -> torch.Tensor:
    """Drop the columns that are padding in every row (batches are padded to the dataset's max_len)."""
    return ids[:, : int((ids != PAD).sum(1).max())]


def train_and_evaluate(attention: str, data, args) -> dict:
    (x_tr, y_tr), (x_te, y_te) = data
    torch.manual_seed(args.seed)
    config = SequenceClassifierConfig(
        vocab_size=len(VOCAB),
        num_classes=10,
        pad_id=PAD,
        pooling="mean",
        positions="learned",
        max_len=args.max_len,
        trunk=trunk_config(attention, args),
    )
    model = SequenceClassifier(config)
    batch = lambda idx: ({"ids": trim(x_tr[idx])}, y_tr[idx])  # noqa: E731
    test = ({"ids": trim(x_te[i : i + 256])} for i in range(0, len(x_te), 256))
    result = train_classifier(model, batch, len(x_tr), test, y_te, args, clip_norm=1.0)
    return {"attention": attention, **result}


def parse_args(argv=None) -> argparse.Namespace:
    p = demo_parser("demo_listops", __doc__, steps=1500, batch_size=64, lr=2e-3)
    p.add_argument("--max-depth", type=int, default=3, help="deepest operator nesting of the expressions")
    p.add_argument("--max-args", type=int, default=5, help="most arguments of one operator")
    p.add_argument("--max-len", type=int, default=80, help="longest expression in tokens")
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--test-size", type=int, default=2000)
    args = p.parse_args(argv)
    if args.steps < 0 or args.train_size < 1 or args.test_size < 1:
        p.error("--steps must be >= 0 and --train-size/--test-size >= 1")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    attentions = setup(args)
    shape = {"max_depth": args.max_depth, "max_args": args.max_args, "max_len": args.max_len}
    train = make_dataset(args.train_size, seed=args.seed, **shape)
    test = make_dataset(args.test_size, seed=args.seed + 1, **shape)
    lengths = (train[0] != PAD).sum(1).float()
    majority = torch.bincount(test[1], minlength=10).max().item() / len(test[1])
    print(
        f"ListOps: {args.train_size} train / {args.test_size} test expressions, depth <= {args.max_depth}, "
        f"<= {args.max_args} args, {lengths.mean():.0f} tokens on average (max {args.max_len}); "
        f"majority-class accuracy {majority:.3f}"
    )
    rows = [train_and_evaluate(a, (train, test), args) for a in attentions]
    print_table(rows, classifier_columns(args.steps))
    return rows


if __name__ == "__main__":
    main()
