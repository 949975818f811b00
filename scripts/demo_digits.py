"""8x8 handwritten digits with an ImageClassifier (patch embedding): flow vs softmax attention.

    python -m flowrl.scripts.demo_digits [--attention flow|softmax|both] [--steps N]

The images are scikit-learn's ``load_digits`` (1,797 grey 8x8 digits, shipped inside the scikit-learn
wheel, nothing is downloaded): ``pip install "flowrl[demos]"`` or ``pip install scikit-learn``.
A fixed, seeded 75/25 split; pixel values 0..16 are scaled to [0, 1].
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from flowrl.scripts.demo_common import (
    classifier_columns,
    demo_parser,
    print_table,
    setup,
    train_classifier,
    trunk_config,
)

from flowrl.models import ImageClassifier, ImageClassifierConfig


def load_digits_split(seed: int, test_fraction: float = 0.25):
    """(x_train [N, 1, 8, 8], y_train), (x_test, y_test) as float32 / int64 tensors."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit(
            "demo_digits needs scikit-learn (its wheel ships the 8x8 digits): pip install 'flowrl[demos]'"
        ) from None
    data = load_digits()
    x = torch.from_numpy((data.images / 16.0).astype(np.float32))[:, None]  # (N, 1, 8, 8)
    y = torch.from_numpy(data.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(y)))
    test, train = perm[:n_test], perm[n_test:]
    return (x[train], y[train]), (x[test], y[test])


def train_and_evaluate(attention: str, data, args) -> dict:
    (x_tr, y_tr), (x_te, y_te) = data
    torch.manual_seed(args.seed)
    config = ImageClassifierConfig(
        num_classes=10,
        image_size=8,
        patch_size=args.patch,
        in_channels=1,
        pooling="cls" if args.cls_token else "mean",
        trunk=trunk_config(attention, args),
    )
    batch = lambda idx: ({"x": x_tr[idx]}, y_tr[idx])  # noqa: E731
    result = train_classifier(ImageClassifier(config), batch, len(x_tr), [{"x": x_te}], y_te, args, weight_decay=0.05)
    return {"attention": attention, **result}


def parse_args(argv=None) -> argparse.Namespace:
    p = demo_parser("demo_digits", __doc__, steps=600, batch_size=64, lr=3e-3)
    p.add_argument("--patch", type=int, default=2, choices=(1, 2, 4), help="patch side: 8x8 images give (8/p)^2 tokens")
    p.add_argument("--cls-token", action="store_true", help="classify from a class token instead of mean pooling")
    args = p.parse_args(argv)
    if args.steps < 0:
        p.error("--steps must be >= 0")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    attentions = setup(args)
    train, test = load_digits_split(args.seed)
    print(
        f"digits: {len(train[1])} train / {len(test[1])} test 8x8 images, 10 classes; "
        f"{(8 // args.patch) ** 2} patches of {args.patch}x{args.patch}"
    )
    rows = [train_and_evaluate(a, (train, test), args) for a in attentions]
    print_table(rows, classifier_columns(args.steps))
    return rows


if __name__ == "__main__":
    main()
