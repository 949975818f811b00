"""Multivariate time-series classification with a TimeSeriesClassifier: flow vs softmax attention.

    python -m flowrl.scripts.demo_timeseries [--attention flow|softmax|both] [--steps N] [--dataset NAME]

Datasets (nothing is downloaded at run time):

- ``japanese_vowels``: the UEA archive's JapaneseVowels (one of the UEA sets of the Flowformer paper):
  9 speakers, 12 LPC cepstrum coefficients per frame, 7-29 frames (variable length, so masks matter);
  270 train / 370 test series. It ships inside the sktime wheel: ``pip install "flowrl[demos]"``.
- ``synthetic``: a documented generator for machines without sktime. Three channels, 24-64 steps,
  4 classes = (slow | fast oscillation) x (channel 1 leads | lags channel 2 by a quarter period),
  random phase and amplitude, Gaussian noise of std 1: a class is only visible across time steps.
- ``auto`` (default): japanese_vowels if sktime is installed, else synthetic.

Channels are standardised with the training set's mean and std over valid (unpadded) steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import math

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

from flowrl.models import TimeSeriesClassifier, TimeSeriesClassifierConfig


def _pad(series: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [T_i, C] arrays -> NaN-padded [N, max T, C] float32 tensor and lengths [N]."""
    lengths = torch.tensor([len(s) for s in series])
    x = torch.full((len(series), int(lengths.max()), series[0].shape[1]), float("nan"))
    for i, s in enumerate(series):
        x[i, : len(s)] = torch.from_numpy(np.asarray(s, dtype=np.float32))
    return x, lengths


def load_japanese_vowels():
    """((x, lengths, y) train, (x, lengths, y) test) from the copy in the sktime wheel."""
    try:
        from sktime.datasets import load_japanese_vowels as load
    except ImportError:
        raise SystemExit(
            "--dataset japanese_vowels needs sktime (its wheel ships the UEA file): pip install 'flowrl[demos]', "
            "or use --dataset synthetic"
        ) from None
    splits = []
    for split in ("train", "test"):
        frame, labels = load(split=split, return_X_y=True)  # nested frame: one pd.Series per cell
        columns = range(frame.shape[1])
        series = [np.stack([frame.iloc[i, c].to_numpy() for c in columns], axis=1) for i in range(len(frame))]
        x, lengths = _pad(series)
        y = torch.tensor([int(label) - 1 for label in labels])
        splits.append((x, lengths, y))
    return splits[0], splits[1]


def make_synthetic(n: int, seed: int):
    """n series of the synthetic task described in the module docstring: (x, lengths, y)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    fast, lag = (y % 2).float(), (y // 2).float() * 2 - 1  # lag: -1 channel 1 leads, +1 it lags
    lengths = torch.randint(24, 65, (n,), generator=g)
    t = torch.arange(64.0)[None, :]
    period = torch.where(fast.bool(), 6.0, 16.0)[:, None] * (0.8 + 0.4 * torch.rand(n, 1, generator=g))
    phase = 2 * math.pi * torch.rand(n, 1, generator=g)
    omega = 2 * math.pi / period
    amp = 0.5 + torch.rand(n, 1, generator=g)
    x = torch.stack(
        [
            amp * torch.sin(omega * t + phase),
            amp * torch.sin(omega * t + phase - lag[:, None] * math.pi / 2),
            amp * torch.sin(omega * t + phase),
        ],
        dim=-1,
    )
    x[..., 2] = x[..., 1] - x[..., 0]  # the difference of the two carries the lead/lag in its phase
    x = x + torch.randn(x.shape, generator=g)
    x[torch.arange(64)[None] >= lengths[:, None]] = float("nan")
    return x, lengths, y


def standardise(train, test):
    x_tr, len_tr, _ = train
    valid = torch.arange(x_tr.shape[1])[None] < len_tr[:, None]
    flat = x_tr[valid]  # (valid steps, C)
    mean, std = flat.mean(0), flat.std(0).clamp_min(1e-6)
    return tuple(((x - mean) / std, lengths, y) for x, lengths, y in (train, test))


def train_and_evaluate(attention: str, data, num_classes: int, args) -> dict:
    (x_tr, len_tr, y_tr), (x_te, len_te, y_te) = data
    torch.manual_seed(args.seed)
    config = TimeSeriesClassifierConfig(
        in_channels=x_tr.shape[-1],
        num_classes=num_classes,
        pooling="mean",
        positions="sinusoidal",
        trunk=trunk_config(attention, args),
    )

    def batch(idx: torch.Tensor):
        T = int(len_tr[idx].max())  # trim the padding that no row of this batch needs
        return {"x": x_tr[idx, :T], "lengths": len_tr[idx]}, y_tr[idx]

    test = [{"x": x_te, "lengths": len_te}]
    result = train_classifier(TimeSeriesClassifier(config), batch, len(y_tr), test, y_te, args)
    return {"attention": attention, **result}


def parse_args(argv=None) -> argparse.Namespace:
    p = demo_parser("demo_timeseries", __doc__, steps=400, batch_size=32, lr=2e-3)
    p.add_argument("--dataset", choices=("auto", "japanese_vowels", "synthetic"), default="auto")
    p.add_argument("--synthetic-size", type=int, default=1000, help="synthetic: train series (test: half as many)")
    args = p.parse_args(argv)
    if args.steps < 0 or args.synthetic_size < 2:
        p.error("--steps must be >= 0 and --synthetic-size >= 2")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    attentions = setup(args)
    dataset = args.dataset
    if dataset == "auto":
        dataset = "japanese_vowels" if importlib.util.find_spec("sktime") else "synthetic"
    if dataset == "japanese_vowels":
        train, test = load_japanese_vowels()
    else:
        train = make_synthetic(args.synthetic_size, args.seed)
        test = make_synthetic(max(args.synthetic_size // 2, 1), args.seed + 1)
    num_classes = int(max(train[2].max(), test[2].max())) + 1
    train, test = standardise(train, test)
    majority = torch.bincount(test[2], minlength=num_classes).max().item() / len(test[2])
    print(
        f"{dataset}: {len(train[2])} train / {len(test[2])} test series, {train[0].shape[-1]} channels, "
        f"{num_classes} classes, lengths {int(train[1].min())}-{int(train[1].max())}; "
        f"majority-class accuracy {majority:.3f}"
    )
    rows = [train_and_evaluate(a, (train, test), num_classes, args) for a in attentions]
    print_table(rows, classifier_columns(args.steps))
    return rows


if __name__ == "__main__":
    main()
