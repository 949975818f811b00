"""FLOWRL_TINY: budgets shrink when it is set, and nothing changes when it is not."""

from __future__ import annotations

import argparse

from flowrl.agents import TrainConfig

from flowrl import tiny


def test_unset_changes_nothing(monkeypatch):
    monkeypatch.delenv(tiny.ENV, raising=False)
    cfg = TrainConfig(steps=20_000, eval_episodes=10)
    assert tiny.shrink(cfg) is cfg
    args = argparse.Namespace(steps=100, episodes=10)
    assert tiny.shrink(args) is args and tiny.cap("steps", 100) == 100
    monkeypatch.setenv(tiny.ENV, "0")
    assert not tiny.enabled() and tiny.shrink(cfg) is cfg


def test_set_caps_budgets_and_keeps_everything_else(monkeypatch):
    monkeypatch.setenv(tiny.ENV, "1")
    cfg = TrainConfig(steps=20_000, eval_every=5_000, eval_episodes=10, num_envs=10, seed=7, bf16=True)
    small = tiny.shrink(cfg)
    assert (small.steps, small.eval_every, small.eval_episodes, small.num_envs) == (4, 2, 2, 2)
    assert small.max_episode_steps == 20  # 0 means "the env's limit": tiny makes it short too
    assert (small.seed, small.bf16) == (7, True) and cfg.steps == 20_000  # a copy; the rest kept
    assert tiny.shrink(TrainConfig(steps=3)).steps == 3  # only ever lowered
    args = tiny.shrink(argparse.Namespace(steps=100, repeats=5, lengths=[4096, 60, 256], no_memory=False, seed=3))
    assert (args.steps, args.repeats, args.lengths, args.no_memory, args.seed) == (4, 1, [60], True, 3)
    assert tiny.shrink(argparse.Namespace(eval_every=0)).eval_every == 0  # 0 = "only at the end" stays
