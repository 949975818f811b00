"""The built-in default dataset (``hopper-medium``), generated from the behaviour policy shipped in
``flowrl/envs/policies/`` without SB3, and :func:`export_behavior_policy`, which made that policy."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from flowrl.envs.collect.levels import DEFAULT_TRANSITIONS
from flowrl.envs.collect.recording import flat_dims, record, summarize
from flowrl.envs.collect.writers import check_free_space, dataset_id, estimate_bytes, flowrl_version, write_level

from flowrl import tiny
from flowrl.errors import InputError

__all__ = ["DEFAULT_DATASETS", "ensure_default_dataset", "export_behavior_policy"]

DEFAULT_DATASETS = {"hopper-medium": ("hopper", "medium", "hopper_medium_sac")}


def ensure_default_dataset(
    name: str = "hopper-medium",
    *,
    progress: bool = True,
    transitions: int = DEFAULT_TRANSITIONS,
    seed: int = 0,
    num_envs: int = 16,
) -> str:
    """The Minari id of a built-in default dataset, generating it from the shipped policy when absent.

    ``hopper-medium`` -> ``flowrl/hopper/medium-v0``: ``transitions`` steps of the shipped Hopper SAC policy
    (stochastic actions), batched over ``num_envs`` env copies; about a minute on one core, no SB3 needed.
    """
    from flowrl.envs.behavior import load_behavior, shipped_policy_path
    from flowrl.envs.minari_io import minari_root, resolve_minari_id
    from flowrl.envs.specs import get_spec

    key = name[len("flowrl/") :].replace("/", "-").removesuffix("-v0") if name.startswith("flowrl/") else name
    if key not in DEFAULT_DATASETS:
        raise InputError(f"no built-in default dataset {name!r}; built-in: {', '.join(DEFAULT_DATASETS)}")
    env, level, policy_name = DEFAULT_DATASETS[key]
    ds_id = dataset_id(env, level)
    if resolve_minari_id(ds_id) is not None:
        return ds_id
    path = shipped_policy_path(policy_name)
    if not path.is_file():
        raise FileNotFoundError(f"the shipped behaviour policy {path} is missing from this installation")
    spec = get_spec(env)
    policy = load_behavior(path)
    check_free_space(minari_root(), estimate_bytes(transitions, policy.obs_dim, policy.act_dim), f"dataset {ds_id!r}")
    t0 = time.time()
    arr = record(spec, transitions, policy, seed=seed, num_envs=num_envs, progress=progress, desc=f"generate {ds_id}")
    info = getattr(policy, "info", {})
    meta = {
        "env_name": spec.name,
        "gym_id": spec.gym_id,
        "level": level,
        "seed": seed,
        "flowrl_version": flowrl_version(),
        "policy": f"flowrl.envs/policies/{path.name} (shipped)",
        "algorithm_name": "SB3 SAC actor (shipped, stochastic actions)",
        **{k: info[k] for k in ("policy_step", "eval_return", "training_steps", "command") if k in info},
        "ref_min_score": spec.ref_min_score,
        "ref_max_score": spec.ref_max_score,
        "ref_source": "D4RL",
        "generation_wall_s": round(time.time() - t0, 1),
        **summarize(arr),
    }
    try:
        write_level(ds_id, arr, spec, meta)
    except FileExistsError:  # another process generated it meanwhile
        pass
    return ds_id


def export_behavior_policy(
    source,
    out: str | os.PathLike,
    env: str = "hopper",
    *,
    info: dict[str, Any] | None = None,
    seeds: tuple[int, ...] = (0, 1, 2),
    transitions: int = DEFAULT_TRANSITIONS,
    num_envs: int = 16,
    progress: bool = True,
) -> dict[str, Any]:
    """Export an SB3 SAC/TD3 model (or ``.zip``) to a compact policy and record what it generates.

    For each seed a default-size dataset is recorded exactly as :func:`ensure_default_dataset` does (not
    written); the sidecar JSON gets ``info`` plus ``mean_return_range`` (the lowest and highest dataset mean
    return over ``seeds``, widened by two standard errors), ``episode_return_range`` (lowest and highest
    complete-episode return), the per-seed means and generation wall times.
    """
    from flowrl.envs.behavior import from_sb3, save_behavior
    from flowrl.envs.specs import get_spec

    spec = get_spec(env)
    transitions, seeds = tiny.cap("transitions", transitions), tuple(seeds)[: tiny.cap("seeds", len(seeds))]
    policy = from_sb3(source)
    obs_dim, act_dim, _, _ = flat_dims(spec)
    if (policy.obs_dim, policy.act_dim) != (obs_dim, act_dim):
        raise InputError(
            f"policy is for sizes {policy.obs_dim}/{policy.act_dim}; {spec.gym_id} has {obs_dim}/{act_dim}"
        )
    means, lows, highs, walls, all_returns = [], [], [], [], []
    for seed in seeds:
        t0 = time.time()
        arr = record(
            spec, transitions, policy, seed=seed, num_envs=num_envs, progress=progress, desc=f"dataset seed {seed}"
        )
        walls.append(round(time.time() - t0, 1))
        rets = arr["episode_returns"]
        se = float(np.std(rets) / np.sqrt(max(len(rets), 1)))
        means.append(float(np.mean(rets)))
        lows.append(means[-1] - 2 * se)
        highs.append(means[-1] + 2 * se)
        all_returns.append(rets)
    rets = np.concatenate(all_returns)
    stats = {
        "env": spec.name,
        "gym_id": spec.gym_id,
        **(info or {}),
        "default_dataset": {
            "transitions": transitions,
            "num_envs": num_envs,
            "seeds": list(seeds),
            "mean_returns": [round(m, 1) for m in means],
            "wall_s": walls,
            "episodes_per_dataset": [len(r) for r in all_returns],
        },
        "mean_return_range": [round(min(lows), 1), round(max(highs), 1)],
        "episode_return_range": [round(float(rets.min()), 1), round(float(rets.max()), 1)],
    }
    save_behavior(policy, out, stats)
    return stats
