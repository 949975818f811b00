"""``flowrl train``: train a Decision Transformer (flow or softmax attention) or BC on an offline dataset.

With no arguments it runs the main job: builds the built-in ``hopper-medium`` dataset from the shipped
behaviour policy if it is not there yet, trains a flow-attention Decision Transformer on a budget that
takes a few minutes on a laptop CPU, evaluates it with vectorized rollouts and prints raw and
D4RL-normalized scores per target return. The run folder holds config.json, checkpoints/, TensorBoard
events, results.json and learning_curve.png.

Settings are layered: dataclass defaults < --preset < --config FILE < explicit flags. --config takes a JSON
file like a run's config.json: {"algo": "dt", "agent": {...}, "train": {...}, "dataset": "..."}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from flowrl.scripts.argtypes import UsageError, positive_int
from flowrl.scripts.dataclass_args import add_dataclass_arguments, given_values

from flowrl.errors import InputError

DEFAULT_DATASET = "hopper-medium"
DEFAULT_STEPS = 1800  # the main job: ~5 min on a 2-core CPU (~7 steps/s fp32) with data generation and evaluation
CONFIG_FILE = "config.json"  # flowrl.agents.run_folder.CONFIG_FILE, without importing torch for --help


def add_parser(sub) -> None:
    from flowrl.agents.config import PRESETS, BCConfig, DecisionTransformerConfig
    from flowrl.agents.trainer import TrainConfig

    p = sub.add_parser(
        "train",
        help="train an agent on an offline dataset (no arguments: the built-in main job)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default=None,
        help=f"dataset: a path (Minari dir, D4RL .hdf5, .npz), a D4RL name (hopper-medium-v2), a Minari id "
        f"(mujoco/hopper/medium-v0) or a flowrl name (default: {DEFAULT_DATASET}, built on first use)",
    )
    p.add_argument("--download", action="store_true", help="allow downloading D4RL/Minari datasets")
    p.add_argument("--algo", choices=("dt", "bc"), default=None, help="dt (Decision Transformer, default) or bc")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="DT hyperparameter preset (default: dt)")
    p.add_argument("--config", metavar="FILE", default=None, help="JSON config file (see above)")
    p.add_argument("--out", metavar="DIR", default=None, help="run folder (default: runs/<dataset>-<algo>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--seeds",
        type=positive_int,
        default=None,
        metavar="S",
        help="train S seeds (--seed .. --seed+S-1) as one seed-batched model; the run folder holds seed_<k>/ "
        "per seed (default: one seed, a plain run)",
    )
    p.add_argument(
        "--global-batch",
        action="store_true",
        help="under torchrun: --batch-size is the global batch, split over the processes (default: per process)",
    )
    seen: set[str] = set()
    add_dataclass_arguments(
        p.add_argument_group("Decision Transformer (and shared agent) settings"), DecisionTransformerConfig, seen=seen
    )
    add_dataclass_arguments(
        p.add_argument_group("BC settings (BC's own defaults: lr 1e-3, batch 256, no warmup)"), BCConfig, seen=seen
    )
    add_dataclass_arguments(p.add_argument_group("training run"), TrainConfig, skip=("extra",), seen=seen)
    for action in p._actions:  # the command's own budget, not the library default
        if action.dest == "steps":
            action.help = f"Gradient updates in total (default for flowrl train: {DEFAULT_STEPS})"
    p.set_defaults(run=run)


def _load_config_file(path: str | None, what: str = "--config") -> dict[str, Any]:
    """A run config (``--config FILE`` or a run's config.json), checked key by key; ``what`` names it."""
    from flowrl.agents.config import CONFIGS

    if path is None:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"cannot read {what} {path}: {e.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{what} {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not set(data) <= {"algo", "agent", "train", "dataset"}:
        raise UsageError(f"{what} {path} must be a JSON object with keys algo, agent, train, dataset")
    if "algo" in data and data["algo"] not in CONFIGS:
        raise UsageError(f"{what} {path}: algo must be one of {', '.join(sorted(CONFIGS))}, got {data['algo']!r}")
    for key in ("agent", "train"):
        if key in data and not isinstance(data[key], dict):
            raise UsageError(f"{what} {path}: {key} must be a JSON object of settings, got {data[key]!r}")
    if "dataset" in data and not (isinstance(data["dataset"], str) and data["dataset"].strip()):
        raise UsageError(f"{what} {path}: dataset must be a dataset name or path, got {data['dataset']!r}")
    return data


def _default_out(dataset: str, algo: str, attention: str | None) -> Path:
    name = Path(dataset).name if Path(dataset).exists() else dataset.replace("/", "-")
    tag = f"{algo}-{attention}" if algo == "dt" else algo
    return Path("runs") / f"{name}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"


def build(args) -> tuple[str, Any, Any, str, list[str]]:
    """(algo, agent config, train config, dataset, notes) from defaults, preset, config file and flags."""
    from flowrl.agents.config import CONFIGS, PRESETS, BCConfig, DecisionTransformerConfig
    from flowrl.agents.trainer import TrainConfig

    file = _load_config_file(args.config)
    algo = args.algo or file.get("algo") or "dt"
    agent_cls = CONFIGS[algo]
    flags = given_values(args, agent_cls)
    if algo == "bc":
        dt_only = set(given_values(args, DecisionTransformerConfig)) - set(flags)
        if args.preset or dt_only:
            bad = ["--preset"] * bool(args.preset) + [f"--{n.replace('_', '-')}" for n in sorted(dt_only)]
            raise UsageError(f"{', '.join(bad)} apply to the Decision Transformer, not to --algo bc")
    else:
        bc_only = set(given_values(args, BCConfig)) - set(flags)
        if bc_only:
            raise UsageError(f"{', '.join('--' + n for n in sorted(bc_only))} apply to --algo bc only")
    agent_values = {**(PRESETS[args.preset or "dt"] if algo == "dt" else {}), **file.get("agent", {}), **flags}
    train_values = {**file.get("train", {}), **given_values(args, TrainConfig)}
    train_values.pop("extra", None)
    if "steps" not in train_values:
        train_values["steps"] = DEFAULT_STEPS
    train_cfg = TrainConfig.from_dict(train_values)
    agent_cfg = agent_cls.from_dict(agent_values)
    notes = []
    # a warmup longer than the run would keep the learning rate far below its peak for the whole run
    if "warmup_steps" not in agent_values and train_cfg.steps and agent_cfg.warmup_steps > train_cfg.steps // 5:
        notes.append(
            f"note: warmup_steps {agent_cfg.warmup_steps} > steps/5; using {train_cfg.steps // 10} "
            "(set --warmup-steps to choose)"
        )
        agent_cfg = agent_cls.from_dict({**agent_values, "warmup_steps": train_cfg.steps // 10})
    dataset = args.dataset or file.get("dataset") or DEFAULT_DATASET
    return algo, agent_cfg, train_cfg, dataset, notes


# TrainConfig fields a resumed run may change: its budget, evaluation, checkpointing and where it runs.
# The others (and every agent setting) are the run's identity: changing them would silently not apply.
_RESUME_FIXED_TRAIN = ("seed",)


def resumed(args, out: Path) -> tuple[str, Any, Any, str, list[str]]:
    """(algo, agent config, train config, dataset, notes) of the run in ``out`` with the flags a resume
    may change; flags (or --config values, or a --preset) that contradict the saved run are refused."""
    from flowrl.agents.config import CONFIGS, PRESETS, config_from_dict
    from flowrl.agents.trainer import TrainConfig

    path = out / CONFIG_FILE
    saved = _load_config_file(str(path), what="--resume: the run config")
    lacking = [k for k in ("algo", "agent", "train", "dataset") if k not in saved]
    if lacking:
        raise UsageError(f"--resume: the run config {path} lacks {', '.join(lacking)}")
    algo = saved["algo"]
    try:
        agent_cfg = config_from_dict(algo, saved["agent"])
        train_saved = TrainConfig.from_dict({k: v for k, v in saved["train"].items() if k != "extra"})
    except InputError as e:
        raise UsageError(f"--resume: the run config {path} is invalid: {e}") from None
    file = _load_config_file(args.config)
    conflicts = []
    for where, value in (("--algo", args.algo), ("--config algo", file.get("algo"))):
        if value is not None and value != algo:
            conflicts.append(f"{where} {value} (the run is {algo})")
    requested = {**(PRESETS[args.preset] if args.preset and algo == "dt" else {}), **file.get("agent", {})}
    for cls in dict.fromkeys([CONFIGS[algo], *CONFIGS.values()]):
        requested.update(given_values(args, cls))
    if args.preset and algo != "dt":
        conflicts.append(f"--preset {args.preset} (the run is {algo})")
    saved_agent = agent_cfg.to_dict()
    for name, value in requested.items():
        flag = "--" + name.replace("_", "-")
        if name not in saved_agent:
            conflicts.append(f"{flag} (not a setting of {algo})")
        elif _normal(value) != _normal(saved_agent[name]):
            conflicts.append(f"{flag} {_show(value)} (the run has {_show(saved_agent[name])})")
    train_values = {**file.get("train", {}), **given_values(args, TrainConfig)}
    train_values.pop("extra", None)
    for name in _RESUME_FIXED_TRAIN:
        if name in train_values and _normal(train_values[name]) != _normal(getattr(train_saved, name)):
            flag = "--" + name.replace("_", "-")
            conflicts.append(f"{flag} {_show(train_values[name])} (the run has {_show(getattr(train_saved, name))})")
    if conflicts:
        raise UsageError(
            f"--resume continues the run in {out} as it was configured; these contradict it: {'; '.join(conflicts)}"
            " (start a new run with another --out, or --overwrite)"
        )
    train_cfg = TrainConfig.from_dict({**train_saved.to_dict(), **train_values})
    dataset = args.dataset or file.get("dataset") or saved["dataset"]
    notes = [f"note: the run was started on dataset {saved['dataset']}"] if dataset != saved["dataset"] else []
    return algo, agent_cfg, train_cfg, dataset, notes


def _normal(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_normal(v) for v in value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def _load(dataset: str, *, download: bool, progress: bool):
    from flowrl.envs import load_dataset
    from flowrl.envs.collect import DEFAULT_DATASETS, ensure_default_dataset

    if dataset in DEFAULT_DATASETS and not Path(dataset).exists():
        dataset = ensure_default_dataset(dataset, progress=progress)
    return load_dataset(dataset, download=download)


def _resume_seeds(out: Path, asked: int | None) -> list[int] | None:
    """The seeds of the seed-batched run in ``out`` (None for a single run), checked against ``--seeds``."""
    from flowrl.agents.seed_training import read_seeds_file

    info = read_seeds_file(out)
    if info is None:
        if asked is not None:
            raise UsageError(f"--resume: {out} is a single run (no seeds.json); resume it without --seeds")
        return None
    seeds = info["seeds"]
    if asked is not None and asked != len(seeds):
        raise UsageError(
            f"--resume: {out} trains {len(seeds)} seeds ({', '.join(map(str, seeds))}), not {asked}; "
            f"resume it with --seeds {len(seeds)} or without --seeds"
        )
    return seeds


def run(args) -> int:
    from flowrl.agents import fit, make_agent
    from flowrl.agents.distributed import distributed_env, fit_distributed, is_main_process, load_dataset_shared
    from flowrl.agents.run_folder import check_run_folder
    from flowrl.agents.trainer import pick_device
    from flowrl.scripts.report import eval_table, table

    progress = not args.quiet
    ddp = distributed_env() is not None  # started by torchrun: data-parallel; only rank 0 writes and prints
    main = is_main_process()
    if args.resume and args.out is None:
        raise UsageError("--resume needs --out RUN_FOLDER")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues a run and --overwrite replaces it: pass one of them")
    # Everything is checked before anything is written: the settings, the run folder (without touching
    # it), the dataset and the model; the folder is claimed only when training starts (see fit).
    if args.resume:
        out = Path(args.out)
        check_run_folder(out, resume=True, overwrite=False)
        algo, agent_cfg, train_cfg, dataset, notes = resumed(args, out)
        seeds = _resume_seeds(out, args.seeds)
    else:
        algo, agent_cfg, train_cfg, dataset, notes = build(args)
        out = Path(args.out) if args.out else _default_out(dataset, algo, getattr(agent_cfg, "attention", None))
        seeds = None if args.seeds is None else list(range(train_cfg.seed, train_cfg.seed + args.seeds))
        if not ddp:
            check_run_folder(out, resume=False, overwrite=args.overwrite)
    if ddp and seeds is not None:
        raise UsageError("a seed-batched run (--seeds) trains every seed in one process; run it without torchrun")

    t0 = time.perf_counter()
    if ddp:  # one copy per machine, shared by its processes; rank 0's errors are raised on every rank

        def load():
            if is_main_process() and not args.resume:
                check_run_folder(out, resume=False, overwrite=args.overwrite)
            return _load(dataset, download=args.download, progress=progress)

        ds = load_dataset_shared(load, device=train_cfg.device)
    else:
        ds = _load(dataset, download=args.download, progress=progress)
    load_s = time.perf_counter() - t0
    device = pick_device(train_cfg.device)
    if seeds is not None:
        train_cfg.extra = {**train_cfg.extra, "dataset": dataset}
        return _run_seeds(args, algo, agent_cfg, train_cfg, dataset, ds, seeds, out, device, load_s, t0, notes)
    agent = make_agent(agent_cfg, ds.obs_dim, ds.act_dim, seed=train_cfg.seed, env_name=ds.env_name).to(device)
    train_cfg.extra = {**train_cfg.extra, "dataset": dataset}
    n_params = sum(p.numel() for p in agent.model.parameters())
    s = ds.summary()
    what = f"{algo}" + (f" ({agent_cfg.attention} attention)" if algo == "dt" else "")

    def on_start(trainer) -> None:  # the run has started: its folder is claimed, nothing was refused
        for note in notes:
            print(note, file=sys.stderr)
        print(
            f"flowrl train: {what}, {n_params / 1e6:.2f}M parameters, {train_cfg.steps} steps on {trainer.device}"
            f"{' with bf16 autocast' if train_cfg.bf16 else ''}\n"
            f"dataset {dataset}: {s['transitions']} transitions, {s['episodes']} episodes, "
            f"return {s['return_mean']:.1f} ± {s['return_std']:.1f} (loaded in {load_s:.1f}s)\n"
            f"run folder: {out}" + (f" (resumed at step {trainer.step})" if args.resume else ""),
            flush=True,
        )

    kw = dict(resume=args.resume, overwrite=args.overwrite, progress=progress, on_start=on_start)
    if ddp:
        results = fit_distributed(agent, ds, train_cfg, out, global_batch=args.global_batch, **kw)
    else:
        results = fit(agent, ds, train_cfg, out, **kw)
    if not main:
        return 0
    tr = results["train"]
    print(
        table(
            ["steps", "steps/s", "final loss", "train seconds"],
            [[tr["steps"], tr["steps_per_s"], tr["final_loss"], f"{tr['seconds']:.0f}"]],
        )
    )
    if results.get("eval"):
        print(f"\nevaluation on {results['eval'][0]['env']} ({train_cfg.eval_episodes} episodes per target):")
        print(eval_table(results["eval"]))
    print(f"\nrun folder: {out} (total {time.perf_counter() - t0:.0f}s)")
    return 0


def _run_seeds(args, algo, agent_cfg, train_cfg, dataset, ds, seeds, out, device, load_s, t0, notes) -> int:
    """``--seeds S``: the seeds trained as one seed-batched model (:func:`flowrl.agents.seed_training.fit_seeds`)."""
    from dataclasses import replace

    from flowrl.agents.run_folder import open_run_folder
    from flowrl.agents.seed_memory import check_memory
    from flowrl.agents.seed_training import fit_seeds, seed_dir
    from flowrl.scripts.report import table

    from flowrl import atomic

    check_memory(agent_cfg, len(seeds), device, ds.obs_dim, ds.act_dim)  # before anything is written
    record = {"algo": algo, "dataset": dataset, "agent": agent_cfg.to_dict(), "train": train_cfg.to_dict()}
    with open_run_folder(out, resume=args.resume, overwrite=args.overwrite, record=record) as path:
        if not args.resume:
            for seed in seeds:  # each seed's folder is a run folder of its own: it resumes alone with --resume
                own = {**record, "train": replace(train_cfg, seed=seed).to_dict()}
                seed_dir(path, seed).mkdir(exist_ok=True)
                atomic.write_json(seed_dir(path, seed) / "config.json", own)
        for note in notes:
            print(note, file=sys.stderr)
        s = ds.summary()
        what = f"{algo}" + (f" ({agent_cfg.attention} attention)" if algo == "dt" else "")
        print(
            f"flowrl train: {what}, {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}) as one seed-batched model, "
            f"{train_cfg.steps} steps on {device}{' with bf16 autocast' if train_cfg.bf16 else ''}\n"
            f"dataset {dataset}: {s['transitions']} transitions, {s['episodes']} episodes, "
            f"return {s['return_mean']:.1f} ± {s['return_std']:.1f} (loaded in {load_s:.1f}s)\n"
            f"run folder: {out}",
            flush=True,
        )
        res = fit_seeds(
            agent_cfg, ds, train_cfg, seeds, path, resume=args.resume, progress=not args.quiet, env_name=ds.env_name
        )
    rows = []
    for seed in seeds:
        if seed in res["stopped"]:
            rows.append([seed, "-", "-", "-", f"stopped: {res['stopped'][seed]['reason']}"])
            continue
        r = res["per_seed"][seed]
        best = max(r.get("eval") or [{}], key=lambda e: e.get("return_mean", float("-inf")))
        rows.append(
            [seed, r["train"]["steps"], r["train"]["final_loss"], best.get("return_mean"), best.get("normalized_mean")]
        )
    print(table(["seed", "steps", "final loss", "return", "normalized score"], rows))
    for row in res["summary"]:
        if "score_mean" not in row:
            continue
        target = "-" if row["target_return"] is None else f"{row['target_return']:g}"
        n = len(row["seeds"])
        over = f"mean ± standard error over {n} seeds" if n > 1 else "one seed"
        spread = "" if row.get("score_se") is None else f" ± {row['score_se']:.1f}"
        print(f"target {target}: normalized score {row['score_mean']:.1f}{spread} ({over})")
    print(f"\nrun folder: {out} (total {time.perf_counter() - t0:.0f}s)")
    return 0
