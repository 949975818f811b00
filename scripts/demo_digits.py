"""8x8 handwritten digits with an ImageClassifier (patch embedding): flow vs softmax attention.

    python -m flowrl.scripts.demo_digits [--attention flow|softmax|both] [--steps N]

The images are scikit-learn's ``load_digits`` (1,797 grey 8x8 digits, shipped inside the scikit-learn
wheel, nothing is downloaded): ``pip install "flowrl[demos]"`` or ``pip install scikit-learn``.
A fixed, seeded 75/25 split; pixel values 0..16 are scaled to [0, 1].
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from flowrl.models import FlowformerConfig, ImageClassifier, ImageClassifierConfig


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
        trunk=FlowformerConfig(dim=args.dim, depth=args.depth, heads=args.heads, attention=attention, dropout=0.1),
    )
    model = ImageClassifier(config)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=max(args.steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    model.train()
    for _ in range(args.steps):
        idx = torch.randint(0, len(x_tr), (args.batch_size,), generator=gen)
        loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    train_s = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = model(x_te).argmax(-1)
    return {
        "attention": attention,
        "params": sum(p.numel() for p in model.parameters()),
        "train_s": train_s,
        "test_acc": (pred == y_te).float().mean().item(),
    }


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Markdown table; columns are (key, header, format)."""
    print("| " + " | ".join(h for _, h, _ in columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(format(row[k], f) for k, _, f in columns) + " |")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m flowrl.scripts.demo_digits", description=__doc__.split("\n")[0])
    p.add_argument("--attention", choices=("flow", "softmax", "both"), default="both")
    p.add_argument("--steps", type=int, default=600, help="training steps per model")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=2, choices=(1, 2, 4), help="patch side: 8x8 images give (8/p)^2 tokens")
    p.add_argument("--cls-token", action="store_true", help="classify from a class token instead of mean pooling")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.steps < 0:
        p.error("--steps must be >= 0")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    train, test = load_digits_split(args.seed)
    print(
        f"digits: {len(train[1])} train / {len(test[1])} test 8x8 images, 10 classes; "
        f"{(8 // args.patch) ** 2} patches of {args.patch}x{args.patch}"
    )
    attentions = ("flow", "softmax") if args.attention == "both" else (args.attention,)
    rows = [train_and_evaluate(a, (train, test), args) for a in attentions]
    print_table(
        rows,
        [("attention", "attention", "s"), ("params", "params", ","), ("test_acc", "test accuracy", ".3f"),
         ("train_s", f"train time ({args.steps} steps) [s]", ".1f")],
    )
    return rows


if __name__ == "__main__":
    main()
