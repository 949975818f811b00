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
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from flowrl.scripts.argtypes import UsageError
from flowrl.scripts.dataclass_args import add_dataclass_arguments, given_values

DEFAULT_DATASET = "hopper-medium"
DEFAULT_STEPS = 1800  # the main job: ~5 min on a 2-core CPU (~7 steps/s fp32) with data generation and evaluation
CONFIG_FILE = "config.json"


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


def _prepare_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (out / CONFIG_FILE).is_file():
            raise UsageError(f"--resume: {out} is not a flowrl run folder (no {CONFIG_FILE})")
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UsageError(
                f"run folder {out} already exists; use --resume to continue it or --overwrite to replace it"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"cannot write to run folder {out}: {e.strerror}") from None


def build(args) -> tuple[str, Any, Any, str]:
    """(algo, agent config, train config, dataset) from defaults, preset, config file and flags."""
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
    try:
        train_cfg = TrainConfig.from_dict(train_values)
        agent_cfg = agent_cls.from_dict(agent_values)
    except TypeError as e:
        raise UsageError(f"bad config value: {e}") from None
    # a warmup longer than the run would keep the learning rate far below its peak for the whole run
    if "warmup_steps" not in agent_values and train_cfg.steps and agent_cfg.warmup_steps > train_cfg.steps // 5:
        print(
            f"note: warmup_steps {agent_cfg.warmup_steps} > steps/5; using {train_cfg.steps // 10} "
            "(set --warmup-steps to choose)",
            file=sys.stderr,
        )
        agent_cfg = agent_cls.from_dict({**agent_values, "warmup_steps": train_cfg.steps // 10})
    dataset = args.dataset or file.get("dataset") or DEFAULT_DATASET
    return algo, agent_cfg, train_cfg, dataset


def _load(dataset: str, *, download: bool, progress: bool):
    from flowrl.envs import load_dataset
    from flowrl.envs.collect import DEFAULT_DATASETS, ensure_default_dataset

    if dataset in DEFAULT_DATASETS and not Path(dataset).exists():
        dataset = ensure_default_dataset(dataset, progress=progress)
    return load_dataset(dataset, download=download)


def run(args) -> int:

    from flowrl.agents import fit, make_agent
    from flowrl.agents.config import config_from_dict
    from flowrl.agents.distributed import distributed_env, fit_distributed, is_main_process, load_dataset_shared
    from flowrl.agents.trainer import TrainConfig, pick_device
    from flowrl.scripts.report import eval_table, table

    from flowrl import atomic

    progress = not args.quiet
    ddp = distributed_env() is not None  # started by torchrun: data-parallel; only rank 0 writes and prints
    main = is_main_process()
    if args.resume:
        if args.out is None:
            raise UsageError("--resume needs --out RUN_FOLDER")
        out = Path(args.out)
        _prepare_out(out, resume=True, overwrite=False)
        saved = _load_config_file(str(out / CONFIG_FILE), what="--resume: the run config")
        lacking = [k for k in ("algo", "agent", "train", "dataset") if k not in saved]
        if lacking:
            raise UsageError(f"--resume: the run config {out / CONFIG_FILE} lacks {', '.join(lacking)}")
        algo, dataset = saved["algo"], args.dataset or saved["dataset"]
        agent_cfg = config_from_dict(algo, saved["agent"])
        train_cfg = TrainConfig.from_dict({**saved["train"], **given_values(args, TrainConfig)})
    else:
        algo, agent_cfg, train_cfg, dataset = build(args)
        out = Path(args.out) if args.out else _default_out(dataset, algo, getattr(agent_cfg, "attention", None))
        if main:
            _prepare_out(out, resume=False, overwrite=args.overwrite)
        if args.overwrite and main:
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()

    t0 = time.perf_counter()
    if ddp:  # one copy per machine, shared by its processes
        ds = load_dataset_shared(
            lambda: _load(dataset, download=args.download, progress=progress), device=train_cfg.device
        )
    else:
        ds = _load(dataset, download=args.download, progress=progress)
    load_s = time.perf_counter() - t0
    device = pick_device(train_cfg.device)
    agent = make_agent(agent_cfg, ds.obs_dim, ds.act_dim, seed=train_cfg.seed, env_name=ds.env_name).to(device)
    train_cfg.extra = {**train_cfg.extra, "dataset": dataset}
    if not args.resume and main:
        record = {"algo": algo, "dataset": dataset, "agent": agent_cfg.to_dict(), "train": train_cfg.to_dict()}
        atomic.write_json(out / CONFIG_FILE, record)
    n_params = sum(p.numel() for p in agent.model.parameters())
    s = ds.summary()
    what = f"{algo}" + (f" ({agent_cfg.attention} attention)" if algo == "dt" else "")
    if main:
        print(
            f"flowrl train: {what}, {n_params / 1e6:.2f}M parameters, {train_cfg.steps} steps on {device}"
            f"{' with bf16 autocast' if train_cfg.bf16 else ''}\n"
            f"dataset {dataset}: {s['transitions']} transitions, {s['episodes']} episodes, "
            f"return {s['return_mean']:.1f} ± {s['return_std']:.1f} (loaded in {load_s:.1f}s)\n"
            f"run folder: {out}",
            flush=True,
        )
    if ddp:
        results = fit_distributed(
            agent, ds, train_cfg, out, resume=args.resume, progress=progress, global_batch=args.global_batch
        )
    else:
        results = fit(agent, ds, train_cfg, out, resume=args.resume, progress=progress)
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
