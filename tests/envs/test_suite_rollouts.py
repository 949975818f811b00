"""Every D4RL suite end to end: a small dataset in Minari's layout for that suite (dict observations with
goals, Kitchen's nested goal dicts, Adroit's flat ones), read back by Minari's own reader and by flowrl,
a tiny agent trained on it, and ``flowrl evaluate`` in the suite's real environment reporting the
normalized score and the success rate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flowrl.envs import load_dataset, make_env
from flowrl.envs.minari_io import write_minari_episodes

SUITES = {
    "D4RL/pointmaze/umaze-v2": "pointmaze-umaze",
    "D4RL/antmaze/umaze-v1": "antmaze-umaze",
    "D4RL/door/human-v2": "door",
    "D4RL/kitchen/mixed-v2": "kitchen-mixed",
}


def _stack(items):
    if isinstance(items[0], dict):
        return {k: _stack([it[k] for it in items]) for k in items[0]}
    return np.stack(items)


def _minari_dataset(dataset_id, task, episodes=2, steps=15):
    """Random-action episodes of the task's evaluation environment, written in Minari's layout."""
    env = make_env(task)
    rng = np.random.default_rng(0)
    eps = []
    for e in range(episodes):
        obs, _ = env.reset(seed=e)
        seen, acts, rews, terms, truncs = [obs], [], [], [], []
        for t in range(steps):
            a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            obs, r, term, trunc, _ = env.step(a)
            seen.append(obs)
            acts.append(a)
            rews.append(r)
            terms.append(term)
            truncs.append(trunc or t == steps - 1)
            if term:
                break
        eps.append(
            {
                "observations": _stack(seen),
                "actions": np.stack(acts),
                "rewards": np.asarray(rews),
                "terminations": np.asarray(terms),
                "truncations": np.asarray(truncs) & ~np.asarray(terms),
                "seed": e,
            }
        )
    write_minari_episodes(dataset_id, eps, env_spec=env.spec, metadata={"description": f"test {task}"})
    env.close()
    return eps


@pytest.mark.parametrize("dataset_id", sorted(SUITES))
def test_suite_end_to_end(dataset_id, tmp_path, capsys):
    import minari
    from flowrl.scripts.cli import main

    task = SUITES[dataset_id]
    eps = _minari_dataset(dataset_id, task)
    # Minari's own reader gets the episodes back as written (nested dicts included)
    theirs = minari.load_dataset(dataset_id)
    first = next(theirs.iterate_episodes())
    if isinstance(eps[0]["observations"], dict):
        leaves = {"kitchen-mixed": ("desired_goal", "kettle")}.get(task, ("achieved_goal",))
        mine, got = eps[0]["observations"], first.observations
        for k in leaves:
            mine, got = mine[k], got[k]
        np.testing.assert_array_equal(got, mine)
    np.testing.assert_array_equal(first.actions, eps[0]["actions"])
    ds = load_dataset(dataset_id)
    assert ds.env_name is not None and ds.num_transitions == sum(len(e["actions"]) for e in eps)
    run = tmp_path / "run"
    common = ["--steps", "3", "--eval-episodes", "0", "--quiet", "--out", str(run)]
    assert main(["train", "--dataset", dataset_id, "--algo", "bc", "--hidden", "8", *common]) == 0
    out = tmp_path / "eval.json"
    code = main(
        ["evaluate", str(run), "--episodes", "2", "--num-envs", "2", "--max-episode-steps", "8", "--quiet"]
        + [
            "--json",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    (row,) = json.loads(out.read_text())
    assert row["episodes"] == 2 and row["normalized_mean"] is not None
    assert row["success_rate"] is not None and len(row["success"]) == 2
    assert "success" in capsys.readouterr().out  # the table shows the success column
