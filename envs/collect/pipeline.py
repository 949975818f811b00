"""``flowrl collect ENV``: train (or resume) a behaviour policy, then record the requested levels as Minari
datasets ``flowrl/<env>/<level>-v0`` (:func:`collect`); or record one level from an existing policy file
(:func:`collect_from_policy`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from flowrl.envs.collect.default_dataset import export_behavior_policy
from flowrl.envs.collect.levels import (
    DEFAULT_TRANSITIONS,
    EXPERT_RULES,
    LEVELS,
    MEDIUM_RULES,
    POLICY_LEVELS,
    parse_levels,
    select_expert,
    select_medium,
)
from flowrl.envs.collect.recording import (
    buffer_transitions,
    concat_levels,
    flat_dims,
    measure_returns,
    record,
    summarize,
)
from flowrl.envs.collect.training import RUN_FILE, BehaviorTrainingConfig, train_behavior
from flowrl.envs.collect.writers import check_free_space, dataset_id, estimate_bytes, flowrl_version, write_level

from flowrl import tiny
from flowrl.errors import InputError, OutputExistsError

__all__ = ["CollectConfig", "collect", "collect_from_policy", "default_run_dir"]


@dataclass
class CollectConfig(BehaviorTrainingConfig):
    """``flowrl collect ENV``: train a behaviour policy, then record D4RL-style levels as Minari datasets."""

    levels: tuple[str, ...] = LEVELS
    """Levels to write: random, medium, medium-replay, expert, medium-expert (empty: train only)."""
    transitions: int = DEFAULT_TRANSITIONS
    """Transitions per recorded level (random, medium, expert); D4RL used 1M, 100k keeps a run in minutes."""
    medium_fraction: float = 1 / 3
    """Medium policy = the checkpoint at this fraction of the expert's evaluated return (see ``medium_rule``)."""
    medium_rule: str = "closest"
    """``closest``: evaluated return nearest the target; ``first``: first checkpoint reaching it."""
    expert_rule: str = "best"
    """Expert policy: ``best`` evaluated checkpoint, or ``final`` (the last one)."""
    ref_episodes: int = 100
    """Episodes for measured reference scores (envs without D4RL constants)."""
    num_envs: int = 16
    """Env copies stepped together while recording."""
    run_dir: str | None = None
    """Training run directory (default ``~/.cache/flowrl/collect/<env>-<algo>-seed<seed>``)."""
    overwrite: bool = False
    """Replace existing datasets with the same ids."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.levels = parse_levels(self.levels)
        if self.transitions <= 0 or self.ref_episodes <= 0 or self.num_envs <= 0:
            raise InputError("transitions, ref_episodes and num_envs must be positive")
        if not 0.0 < self.medium_fraction <= 1.0:
            raise InputError(f"medium fraction must be in (0, 1], got {self.medium_fraction}")
        if self.medium_rule not in MEDIUM_RULES or self.expert_rule not in EXPERT_RULES:
            raise InputError(f"medium rule must be one of {MEDIUM_RULES} and expert rule one of {EXPERT_RULES}")


def default_run_dir(env: str, algo: str, seed: int) -> Path:
    base = Path(os.environ.get("FLOWRL_CACHE") or Path.home() / ".cache" / "flowrl")
    return base / "collect" / f"{env}-{algo}-seed{seed}"


def _reference_scores(spec, cfg: CollectConfig, expert_policy, progress: bool) -> dict[str, Any]:
    if spec.has_reference:
        return {"ref_min_score": spec.ref_min_score, "ref_max_score": spec.ref_max_score, "ref_source": "D4RL"}
    lo = measure_returns(
        spec,
        None,
        cfg.ref_episodes,
        seed=cfg.seed + 20_000,
        num_envs=cfg.num_envs,
        progress=progress,
        desc="ref: random",
    )
    out: dict[str, Any] = {"ref_min_score": float(lo.mean()), "ref_source": f"measured over {len(lo)} episodes"}
    if expert_policy is not None:
        hi = measure_returns(
            spec,
            expert_policy,
            cfg.ref_episodes,
            seed=cfg.seed + 30_000,
            num_envs=cfg.num_envs,
            progress=progress,
            desc="ref: expert",
        )
        out["ref_max_score"] = float(hi.mean())
    return out


def collect(
    cfg: CollectConfig,
    *,
    progress: bool = True,
    on_checkpoint: Callable[[dict], None] | None = None,
    command: str | None = None,
    export_behavior: str | os.PathLike | None = None,
    export_seeds: tuple[int, ...] = (0, 1, 2),
    export_transitions: int = DEFAULT_TRANSITIONS,
) -> dict[str, dict[str, Any]]:
    """Train (or resume) the behaviour policy and write the requested levels; returns ``{level: info}``.

    Every target id is checked before any work (existing ones refused unless ``overwrite``), and so is the
    free disk space. Each dataset is written atomically. With ``export_behavior`` the medium policy's actor is
    also exported there as a compact policy (see :func:`export_behavior_policy`).
    """
    from flowrl.envs.behavior import from_sb3
    from flowrl.envs.minari_io import minari_root
    from flowrl.envs.specs import get_spec

    cfg = tiny.shrink(cfg)  # FLOWRL_TINY=1: a few SB3 steps, a few hundred transitions (flowrl.tiny)
    spec = get_spec(cfg.env)
    obs_dim, act_dim, low, high = flat_dims(spec)
    ids = {lv: dataset_id(cfg.env, lv) for lv in cfg.levels}
    root = minari_root()
    if not cfg.overwrite:
        taken = [i for i in ids.values() if (root / i).exists()]
        if taken:
            raise OutputExistsError(f"dataset {taken[0]!r} already exists in {root} (pass --overwrite to replace it)")
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(spec.name, cfg.algo, cfg.seed)
    n_ckpt = -(-cfg.steps // cfg.checkpoint_every)
    sizes = {
        "random": cfg.transitions,
        "medium": cfg.transitions,
        "expert": cfg.transitions,
        "medium-replay": cfg.steps,
        "medium-expert": 2 * cfg.transitions,
    }
    check_free_space(root, sum(estimate_bytes(sizes[lv], obs_dim, act_dim) for lv in cfg.levels), "the datasets")
    needs_policy = any(lv != "random" for lv in cfg.levels) or not spec.has_reference or export_behavior is not None
    if export_behavior is not None and Path(export_behavior).with_suffix(".pt").exists() and not cfg.overwrite:
        raise OutputExistsError(
            f"{Path(export_behavior).with_suffix('.pt')} already exists (pass --overwrite to replace it)"
        )
    if needs_policy and not (run_dir / RUN_FILE).is_file():
        ckpt_bytes = 40 * (obs_dim + act_dim + 256) * 256 + (1 << 20)  # SB3 zip: actor, critics, optimizers
        check_free_space(
            run_dir, n_ckpt * ckpt_bytes + estimate_bytes(cfg.steps, 2 * obs_dim, act_dim), "the training run"
        )

    state: dict[str, Any] | None = None
    medium_ck: dict[str, Any] = {}
    final_ck: dict[str, Any] = {}
    policies: dict[str, Any] = {}
    ckpts: list[dict[str, Any]] = []
    if needs_policy:
        train_cfg = BehaviorTrainingConfig(**{f.name: getattr(cfg, f.name) for f in fields(BehaviorTrainingConfig)})
        state = train_behavior(train_cfg, run_dir, progress=progress, on_checkpoint=on_checkpoint, command=command)
        ckpts = [c for c in state["checkpoints"] if c["step"] <= cfg.steps]
        final_ck = select_expert(ckpts, cfg.expert_rule)
        medium_ck = select_medium(ckpts, cfg.medium_fraction, expert=final_ck, rule=cfg.medium_rule)
        for name, ck in (("medium", medium_ck), ("expert", final_ck)):
            policies[name] = from_sb3(run_dir / ck["model"])  # the actor only, read without unpickling
        if export_behavior is not None:
            info = {
                "algorithm": f"SB3 {cfg.algo.upper()}",
                "command": command or state.get("command"),
                "training_command": state.get("command"),
                "run_dir": str(run_dir),
                "seed": cfg.seed,
                "training_steps": ckpts[-1]["step"],
                "medium_fraction": cfg.medium_fraction,
                "medium_rule": cfg.medium_rule,
                "expert_rule": cfg.expert_rule,
                "expert_step": final_ck["step"],
                "policy_step": medium_ck["step"],
                "eval_return": medium_ck["eval_return_mean"],
                "eval_returns": medium_ck["eval_returns"],
                "expert_eval_return": final_ck["eval_return_mean"],
                "eval_episodes": cfg.eval_episodes,
                "training_wall_s": state.get("train_wall_s"),
                "checkpoint_returns": {c["step"]: round(c["eval_return_mean"], 1) for c in ckpts},
            }
            export_behavior_policy(
                run_dir / medium_ck["model"],
                export_behavior,
                cfg.env,
                info=info,
                seeds=export_seeds,
                transitions=export_transitions,
                num_envs=cfg.num_envs,
                progress=progress,
            )
            if progress:
                print(
                    f"exported the medium policy (step {medium_ck['step']}, eval return "
                    f"{medium_ck['eval_return_mean']:.1f}) to {export_behavior}",
                    file=sys.stderr,
                )
    if not cfg.levels:
        return {}
    refs = _reference_scores(spec, cfg, policies.get("expert"), progress)

    common = {
        "env_name": spec.name,
        "gym_id": spec.gym_id,
        "seed": cfg.seed,
        "flowrl_version": flowrl_version(),
        "command": command,
        **refs,
    }
    if state is not None:
        common.update(
            training_algorithm=f"SB3 {cfg.algo.upper()}",
            training_steps=ckpts[-1]["step"],
            run_dir=str(run_dir),
            medium_fraction=cfg.medium_fraction,
            medium_rule=cfg.medium_rule,
            expert_rule=cfg.expert_rule,
        )
    recorded: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def get(level: str) -> tuple[dict[str, Any], dict[str, Any]]:
        if level not in recorded:
            if level == "random":
                arr = record(
                    spec,
                    cfg.transitions,
                    None,
                    seed=cfg.seed,
                    num_envs=cfg.num_envs,
                    progress=progress,
                    desc="record random",
                )
                meta: dict[str, Any] = {"algorithm_name": "uniform random actions", "policy": "uniform random"}
            elif level in POLICY_LEVELS:
                ck = medium_ck if level == "medium" else final_ck
                arr = record(
                    spec,
                    cfg.transitions,
                    policies[level],
                    seed=cfg.seed + 1 + LEVELS.index(level),
                    num_envs=cfg.num_envs,
                    progress=progress,
                    desc=f"record {level}",
                )
                meta = {
                    "algorithm_name": f"SB3 {cfg.algo.upper()} (stochastic actions)",
                    "policy": f"{run_dir / ck['model']}",
                    "policy_step": ck["step"],
                    "eval_return": ck["eval_return_mean"],
                }
            elif level == "medium-replay":
                arr = buffer_transitions(run_dir, medium_ck["step"], low, high)
                meta = {
                    "algorithm_name": f"SB3 {cfg.algo.upper()} replay buffer",
                    "policy": "replay buffer up to the medium checkpoint",
                    "policy_step": medium_ck["step"],
                    "eval_return": medium_ck["eval_return_mean"],
                }
            else:
                arr = concat_levels(get("medium")[0], get("expert")[0])
                meta = {
                    "algorithm_name": f"SB3 {cfg.algo.upper()} medium + expert",
                    "policy": "medium and expert checkpoints",
                    "policy_step": [medium_ck["step"], final_ck["step"]],
                    "eval_return": [medium_ck["eval_return_mean"], final_ck["eval_return_mean"]],
                }
            recorded[level] = (arr, meta)
        return recorded[level]

    out: dict[str, dict[str, Any]] = {}
    for level in cfg.levels:
        arr, meta = get(level)
        stats = summarize(arr)
        meta = {**common, **meta, "level": level, **stats}
        path = write_level(ids[level], arr, spec, meta, overwrite=cfg.overwrite)
        out[level] = {
            "dataset_id": ids[level],
            "path": str(path),
            **stats,
            **{k: meta[k] for k in ("policy_step", "eval_return") if k in meta},
        }
        if progress:
            print(
                f"wrote {ids[level]}: {stats['transitions']} transitions, {stats['episodes']} episodes, "
                f"mean return {stats['mean_return']:.1f}",
                file=sys.stderr,
            )
    return out


def collect_from_policy(
    env: str,
    policy_path: str | os.PathLike,
    level: str,
    transitions: int = DEFAULT_TRANSITIONS,
    *,
    seed: int = 0,
    deterministic: bool = False,
    num_envs: int = 16,
    overwrite: bool = False,
    dataset: str | None = None,
    ref_episodes: int = 100,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """Record ``transitions`` steps of an existing policy (SB3 SAC/TD3 ``.zip`` or flowrl ``.pt``) as a level."""
    from flowrl.envs.behavior import load_behavior
    from flowrl.envs.minari_io import minari_root
    from flowrl.envs.specs import get_spec

    spec = get_spec(env)
    transitions = tiny.cap("transitions", transitions)  # FLOWRL_TINY (flowrl.tiny)
    if level not in POLICY_LEVELS:
        if level in LEVELS:
            raise InputError(
                f"level {level!r} cannot be recorded from one policy; --from-policy records "
                f"{' or '.join(POLICY_LEVELS)}"
            )
        raise InputError(f"unknown level {level!r}; --from-policy records {' or '.join(POLICY_LEVELS)}")
    if transitions <= 0:
        raise InputError(f"transitions must be positive, got {transitions}")
    ds_id = dataset or dataset_id(env, level)
    root = minari_root()
    if (root / ds_id).exists() and not overwrite:
        raise OutputExistsError(f"dataset {ds_id!r} already exists in {root} (pass --overwrite to replace it)")
    obs_dim, act_dim, _, _ = flat_dims(spec)
    policy = load_behavior(policy_path)
    if (policy.obs_dim, policy.act_dim) != (obs_dim, act_dim):
        raise InputError(
            f"policy {policy_path} is for observations of size {policy.obs_dim} and actions of size "
            f"{policy.act_dim}; {spec.gym_id} has {obs_dim} and {act_dim}"
        )
    check_free_space(root, estimate_bytes(transitions, obs_dim, act_dim), f"dataset {ds_id!r}")
    arr = record(
        spec,
        transitions,
        policy,
        deterministic=deterministic,
        seed=seed,
        num_envs=num_envs,
        progress=progress,
        desc=f"record {level}",
    )
    if spec.has_reference:
        refs = {"ref_min_score": spec.ref_min_score, "ref_max_score": spec.ref_max_score, "ref_source": "D4RL"}
    else:
        lo = measure_returns(
            spec, None, ref_episodes, seed=seed + 20_000, num_envs=num_envs, progress=progress, desc="ref: random"
        )
        refs = {"ref_min_score": float(lo.mean()), "ref_source": f"measured over {len(lo)} episodes"}
    info = getattr(policy, "info", {})
    meta = {
        "env_name": spec.name,
        "gym_id": spec.gym_id,
        "level": level,
        "seed": seed,
        "command": command,
        "flowrl_version": flowrl_version(),
        "policy": str(Path(policy_path).resolve()),
        "algorithm_name": f"{policy.kind.upper()} policy ({'deterministic' if deterministic else 'stochastic'})",
        **{k: info[k] for k in ("policy_step", "eval_return", "training_steps") if k in info},
        **refs,
        **summarize(arr),
    }
    path = write_level(ds_id, arr, spec, meta, overwrite=overwrite)
    return {"dataset_id": ds_id, "path": str(path), **summarize(arr)}
