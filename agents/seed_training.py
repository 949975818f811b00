"""Seed-batched training: S seeds of one agent configuration trained as one stacked model in one process.

:func:`fit_seeds` trains what S runs of :func:`flowrl.agents.fit` with seeds ``seeds[0..S-1]`` would train,
each seed with its own initial weights (built with its seed, as a single run builds them), its own batches
(a sampler seeded exactly as its single run's), its own dropout masks (one ``torch.Generator`` per seed,
seeded as the single run seeds torch), its own AdamW state (one fused AdamW over the stacked parameters: it is
elementwise), its own gradient-norm clipping (per-seed norms) and its own learning-rate schedule. Seed s
ends up the model seed s trains alone, up to floating-point reassociation (tested: within 1e-5 after 20
updates in float32, with identical batches and masks).

The run folder holds one complete single-run folder per seed, so each seed loads, evaluates and even
resumes alone like any run (``flowrl evaluate RUN/seed_3``)::

    seeds.json              the seeds and the ones stopped early (and why)
    results.json            every seed's final scores and their mean ± standard error
    learning_curve.png      loss and evaluation score against update steps: mean and spread over seeds
    seed_<k>/               config.json (CLI runs), checkpoints/, TensorBoard events, results.json,
                            learning_curve.png: what ``fit`` with seed k writes

A checkpoint is written for every seed at the same step (all step folders first, then the ``latest``
pointers, then pruning), so a run killed at any moment resumes from a step every seed holds; resuming
restores weights, optimizer, scheduler, each seed's sampler and dropout generator, so the final weights
equal an uninterrupted run's bit for bit on a CPU.

A seed whose loss or gradient norm stops being finite stops alone: it is dropped from the stacked model
(its folder keeps its last checkpoint, its ``results.json`` and ``seeds.json`` say at which update and why)
and the other seeds go on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flowrl.agents.agent import WEIGHTS_KEY, Agent, make_agent
from flowrl.agents.checkpoints import load_checkpoint, point_latest, prune_checkpoints, step_name, write_step
from flowrl.agents.optim import adamw_with_warmup, param_groups
from flowrl.agents.seed_memory import check_memory
from flowrl.agents.seed_policy import make_seed_policy
from flowrl.agents.stacking import keep_seeds, load_seed_state_dicts, seed_state_dict, stack_models
from flowrl.agents.trainer import TrainConfig, Trainer, pick_device

from flowrl import atomic, tiny
from flowrl.errors import InputError, MissingInputError

__all__ = ["SeedTrainer", "fit_seeds", "seed_dir", "read_seeds_file", "summarize_seeds", "SEEDS_FILE"]

SEEDS_FILE = "seeds.json"


def seed_dir(run_dir: str | os.PathLike, seed: int) -> Path:
    """The folder of seed ``seed`` inside a seed-batched run folder."""
    return Path(run_dir) / f"seed_{seed}"


def read_seeds_file(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``seeds.json`` of a seed-batched run folder ({"seeds": [...], "stopped": {seed: {...}}}), or None."""
    path = Path(run_dir) / SEEDS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        data["seeds"] = [int(s) for s in data["seeds"]]
        data["stopped"] = {int(k): v for k, v in data.get("stopped", {}).items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{path} is not a flowrl seeds file: {e}") from None
    return data


class _SeedView(Trainer):
    """One seed's single-run Trainer, used for what a single run owns: its sampler (seeded as that run's),
    its run folder (TensorBoard, results, plot) and its checkpoint format. The batched trainer does the
    updates; ``trainer_state`` reports this seed's share of them."""

    batched: SeedTrainer
    index: int  # the seed's position in the batched trainer's agents
    generator: torch.Generator

    def trainer_state(self) -> dict[str, Any]:
        state = super().trainer_state()
        b = self.batched
        pos = b.live.index(self.index)
        opt = b.optimizer.state_dict()
        state["optimizer"] = {
            "state": {
                i: {k: v[pos].clone() if torch.is_tensor(v) and v.dim() > 0 else v for k, v in st.items()}
                for i, st in opt["state"].items()
            },
            "param_groups": opt["param_groups"],
        }
        state["scheduler"] = b.scheduler.state_dict()
        # a single run saves torch's generator, which on a CPU is the one its dropout draws from
        if self.generator.device.type == "cpu":
            state["torch_rng"] = self.generator.get_state()
        state["dropout_rng"] = self.generator.get_state()
        return state


def _dt_losses(agent, model, batches: list) -> torch.Tensor:
    """Per-seed masked action MSE [S] (what ``DTAgent.loss`` computes for each seed's batch)."""
    S = len(batches)
    err, mask = agent.step_errors(merge_batches(batches), model)  # (S·B, T)
    err, mask = err.reshape(S, -1), mask.reshape(S, -1)
    return (err * mask).sum(1) / mask.sum(1).clamp_min(1.0)


def merge_batches(batches: list):
    """The seeds' batches as one batch (rows seed by seed). Episode batches are as long as their longest
    sequence, which differs between seeds: shorter ones get more right padding (mask 0), which changes
    nothing for causal attention."""
    T = max(b.mask.shape[1] for b in batches)

    def pad(x: np.ndarray) -> np.ndarray:
        if x.ndim < 2 or x.shape[1] == T:
            return x
        return np.pad(x, [(0, 0), (0, T - x.shape[1])] + [(0, 0)] * (x.ndim - 2))

    return type(batches[0])(*(np.concatenate([pad(x) for x in parts]) for parts in zip(*batches)))


def _bc_losses(agent, model, batches: list) -> torch.Tensor:
    """Per-seed action MSE [S] (what ``BCAgent.loss`` computes for each seed's batch)."""
    S = len(batches)
    dev = agent.device
    states = torch.from_numpy(np.concatenate([b.states for b in batches])).to(dev)
    actions = torch.from_numpy(np.concatenate([b.actions for b in batches])).to(dev)
    return (model(states).float() - actions).square().view(S, -1).mean(1)


_LOSSES = {"dt": _dt_losses, "bc": _bc_losses}


def clip_per_seed(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` for each seed of stacked parameters ([S, ...]): seed s's gradients are scaled so
    that their global norm is at most ``max_norm`` (inf: only measured); returns the norms before clipping [S]."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([torch.linalg.vector_norm(g.float(), dim=tuple(range(1, g.dim()))) for g in grads])
    total = torch.linalg.vector_norm(norms, dim=0)  # (S,)
    if math.isfinite(max_norm):
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)  # as torch's clip_grad_norm_
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.dim() - 1)).to(g.dtype))
    return total


class SeedTrainer:
    """Trains ``agents`` (one per seed, built with their seeds; see the module doc) as one stacked model.

    ``run_dir``: the batched run folder (None: no files). ``config.seed`` is ignored: seed k trains with
    ``replace(config, seed=seeds[k])``.
    """

    def __init__(
        self,
        agents: Sequence[Agent],
        dataset,
        config: TrainConfig,
        seeds: Sequence[int],
        run_dir: str | os.PathLike | None = None,
        *,
        progress: bool = True,
    ):
        if len(agents) != len(seeds) or not agents:
            raise ValueError(f"SeedTrainer: {len(agents)} agents for {len(seeds)} seeds")
        if len(set(seeds)) != len(seeds):
            raise InputError(f"seeds must differ, got {list(seeds)}")
        self.agents, self.dataset, self.config = list(agents), dataset, tiny.shrink(config)  # FLOWRL_TINY (flowrl.tiny)
        self.seeds = [int(s) for s in seeds]
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.device = agents[0].device
        self.algo = agents[0].algo
        if self.algo not in _LOSSES:
            raise ValueError(f"SeedTrainer: no seed-batched loss for algo {self.algo!r}")
        self.views: list[_SeedView] = []
        for k, (agent, seed) in enumerate(zip(agents, self.seeds)):
            folder = None if self.run_dir is None else seed_dir(self.run_dir, seed)
            view = _SeedView(agent, dataset, replace(config, seed=seed), folder, progress=False)
            view.batched, view.index = self, k
            view.generator = torch.Generator(device=self.device).manual_seed(seed)
            self.views.append(view)
        self.live = list(range(len(agents)))  # indices of the seeds still training
        self.stopped: dict[int, dict[str, Any]] = {}  # seed -> {"step", "reason"}
        self.generators = [v.generator for v in self.views]  # shared with the stacked dropout modules
        self.model = stack_models([a.model for a in agents], self.generators)
        acfg = agents[0].config
        names = {id(p): n for n, p in agents[0].model.named_parameters()}
        groups = [
            {**g, "params": [self.model.get_parameter(names[id(p)]) for p in g["params"]]}
            for g in param_groups(agents[0].model, acfg.weight_decay)
        ]
        self.optimizer, self.scheduler = adamw_with_warmup(groups, acfg, self.device)
        self.step = 0
        self.batch_size = int(acfg.batch_size)
        self._bad_step = torch.full((len(agents),), -1, dtype=torch.long, device=self.device)

    # ------------------------------------------------------------------ one update
    def sample(self) -> list:
        """One batch per live seed, each from that seed's own sampler."""
        return [self.views[k].sampler.sample(self.batch_size) for k in self.live]

    def update(self, batches: list) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient step of every live seed; returns per-seed (loss, grad norm), [S] tensors (no host sync)."""
        self.model.train()
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.config.bf16 else contextlib.nullcontext()
        with amp:
            losses = _LOSSES[self.algo](self.agents[0], self.model, batches)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # seed s's parameters get the gradient of its own loss alone
        clip = self.agents[0].config.grad_clip
        norms = clip_per_seed(list(self.model.parameters()), clip if clip > 0 else math.inf)
        self.optimizer.step()
        self.scheduler.step()
        losses, norms = losses.detach(), norms.detach()
        bad = ~(torch.isfinite(losses) & torch.isfinite(norms))
        self._bad_step = torch.where((self._bad_step < 0) & bad, self.step + 1, self._bad_step)
        return losses, norms

    # ------------------------------------------------------------------ seeds that diverge
    def _stop_diverged(self) -> None:
        """Drop the seeds whose loss or gradient norm was not finite at some update (one host sync)."""
        bad = self._bad_step.tolist()
        gone = [pos for pos, step in enumerate(bad) if step >= 0]
        if not gone:
            return
        for pos in gone:
            k = self.live[pos]
            seed, view = self.seeds[k], self.views[k]
            last = view.history["step"][-1] if view.history["step"] else None
            ckpt = self._last_checkpoint(k)
            reason = (
                f"the training loss or gradient norm stopped being finite at update {bad[pos]} "
                f"(last finite logged loss {last and view.history['loss'][-1]!r})"
            )
            self.stopped[seed] = {"step": int(bad[pos]), "reason": reason, "checkpoint": ckpt}
            others = len(self.live) - len(gone)
            print(
                f"flowrl: seed {seed}: {reason}; this seed stops here "
                f"({'its last checkpoint is ' + ckpt if ckpt else 'no checkpoint was written'}); "
                f"{others} other seed{'s' * (others != 1)} go on",
                file=sys.stderr,
            )
            if view.run_dir is not None:
                view._write_results({"stopped": self.stopped[seed]})
        keep = [pos for pos in range(len(self.live)) if pos not in gone]
        if not keep:
            self._write_seeds_file()
            raise FloatingPointError(
                f"every seed diverged (non-finite loss): {self.stopped}; lower the learning rate or check the data"
            )
        keep_seeds(self.model, keep, self.optimizer)
        self.live = [self.live[pos] for pos in keep]
        self._bad_step = self._bad_step[torch.as_tensor(keep, device=self.device)]
        self._write_seeds_file()

    def _last_checkpoint(self, k: int) -> str | None:
        view = self.views[k]
        if view.run_dir is None or not (view.checkpoint_dir() / "latest").exists():
            return None
        return (view.checkpoint_dir() / "latest").read_text().strip()

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        """Train every live seed up to ``config.steps``; returns {"seeds", "stopped", "per_seed", "summary"}."""
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        env = self.views[0].eval_env()
        if cfg.eval_episodes > 0 and env is not None:
            from flowrl.envs import check_compatible

            check_compatible(self.dataset, env)
        self._write_seeds_file()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.steps,
                initial=self.step,
                desc=f"train {self.algo} x{len(self.live)} seeds",
                unit="step",
                dynamic_ncols=True,
            )
        t0, s0 = time.perf_counter(), self.step
        window_loss = torch.zeros(len(self.live), device=self.device)
        window_norm = torch.zeros(len(self.live), device=self.device)
        window_n = 0
        final_eval = cfg.eval_episodes > 0
        while self.step < cfg.steps:
            losses, norms = self.update(self.sample())
            self.step += 1
            window_loss += losses.float()
            window_norm += norms.float()
            window_n += 1
            last = self.step == cfg.steps
            if self.step % cfg.log_every == 0 or last:
                mean_loss, mean_norm = (window_loss / window_n).tolist(), (window_norm / window_n).tolist()
                rate = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
                lr = self.scheduler.get_last_lr()[0]
                for pos, k in enumerate(self.live):
                    view = self.views[k]
                    view.step = self.step
                    if not (math.isfinite(mean_loss[pos]) and math.isfinite(mean_norm[pos])):
                        continue  # stopped just below
                    scalars = {"train/loss": mean_loss[pos], "train/grad_norm": mean_norm[pos], "train/lr": lr}
                    view._log_scalars({**scalars, "train/steps_per_s": rate})
                    view.history["step"].append(self.step)
                    view.history["loss"].append(mean_loss[pos])
                live_losses = [x for x in mean_loss if math.isfinite(x)]
                self._stop_diverged()
                window_loss = torch.zeros(len(self.live), device=self.device)
                window_norm = torch.zeros(len(self.live), device=self.device)
                window_n = 0
                if bar is not None and live_losses:
                    bar.set_postfix(loss=f"{np.mean(live_losses):.4f}", seeds=len(self.live), refresh=False)
            if bar is not None:
                bar.update(1)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and not last:
                self._stop_diverged()
                self.evaluate()
            if (self.step % cfg.checkpoint_every == 0 or last) and not (last and final_eval):
                self._stop_diverged()
                self.save_checkpoint()  # with a final evaluation, the last step's is written after it, below
        if bar is not None:
            bar.close()
        self._stop_diverged()
        elapsed = time.perf_counter() - t0
        per_seed: dict[int, dict[str, Any]] = {}
        for k in self.live:
            h = self.views[k].history
            per_seed[self.seeds[k]] = {
                "train": {
                    "steps": self.step,
                    "steps_this_session": self.step - s0,
                    "seconds": elapsed,
                    "steps_per_s": (self.step - s0) / elapsed if elapsed > 0 else None,
                    "seeds_batched": len(self.live),
                    "final_loss": h["loss"][-1] if h["loss"] else None,
                },
                "history": h,
            }
        try:
            if final_eval:
                for seed, ev in self.evaluate().items():
                    per_seed[seed]["eval"] = ev
        finally:  # the last step's checkpoints hold the final evaluation in their history (written if it fails)
            self.save_checkpoint()  # no-op where the last step is saved already
        for k in self.live:
            view = self.views[k]
            if view.run_dir is not None:
                view._write_results(per_seed[self.seeds[k]])
                view._plot()
            if view._writer is not None:
                view._writer.close()
        out = {
            "seeds": self.seeds,
            "stopped": {s: v for s, v in self.stopped.items()},
            "per_seed": per_seed,
            "summary": summarize_seeds(per_seed),
        }
        if self.run_dir is not None:
            atomic.write_text(self.run_dir / "results.json", json.dumps(out, indent=2, default=_jsonable) + "\n")
            from flowrl.agents.seed_plots import plot_seed_curves

            plot_seed_curves(
                {self.seeds[k]: self.views[k].history for k in self.live}, self.run_dir / "learning_curve.png"
            )
        return out

    # ------------------------------------------------------------------ evaluation
    def sync_agents(self) -> None:
        """Copy each live seed's current weights into its single-model agent (for files and split policies)."""
        for pos, k in enumerate(self.live):
            self.agents[k].model.load_state_dict(seed_state_dict(self.model, pos))

    def evaluate(self) -> dict[int, list[dict[str, Any]]]:
        """Every live seed on the same episodes, one batched forward per step; logs each seed's scores."""
        cfg = self.config
        if cfg.eval_episodes <= 0:
            return {}
        from flowrl.envs import evaluate_groups, get_spec

        view0 = self.views[self.live[0]]
        env = view0.eval_env()
        if env is None:
            print("note: the dataset names no environment; skipping evaluation")
            return {}
        agent = self.agents[self.live[0]]
        targets: tuple = (None,)
        if self.algo == "dt":
            targets = cfg.target_returns or get_spec(env).target_returns or agent.dataset_targets()
        self.sync_agents()
        policy = make_seed_policy([self.agents[k] for k in self.live], self.model, rollout=cfg.eval_rollout)
        groups = evaluate_groups(
            policy,
            env,
            len(self.live),
            episodes=cfg.eval_episodes,
            num_envs=cfg.num_envs,
            seed=cfg.eval_seed,
            target_returns=targets,
            max_episode_steps=cfg.max_episode_steps or None,
            progress=self.progress,
            ref_scores=agent.reference_scores(),
        )
        out = {}
        for k, results in zip(self.live, groups):
            view = self.views[k]
            view.step = self.step
            view.record_evaluation(results)
            out[self.seeds[k]] = [r.to_dict() for r in results]
        return out

    # ------------------------------------------------------------------ files
    def _write_seeds_file(self) -> None:
        if self.run_dir is None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        data = {"seeds": self.seeds, "stopped": {str(s): v for s, v in self.stopped.items()}}
        atomic.write_text(self.run_dir / SEEDS_FILE, json.dumps(data, indent=2) + "\n")

    def save_checkpoint(self) -> None:
        """Checkpoint ``step`` for every live seed: all step folders, then all ``latest`` pointers, then pruning."""
        if self.run_dir is None:
            return
        name = step_name(self.step)
        todo = [k for k in self.live if not (self.views[k].checkpoint_dir() / name).exists()]
        if todo:
            self.sync_agents()
        for k in todo:
            view = self.views[k]
            view.step = self.step
            root = view.checkpoint_dir()
            root.mkdir(parents=True, exist_ok=True)
            write_step(root, name, view.agent, view.trainer_state)
        for k in self.live:
            point_latest(self.views[k].checkpoint_dir(), name)
        for k in self.live:
            prune_checkpoints(self.views[k].checkpoint_dir(), self.config.keep_checkpoints)

    def resume(self) -> int:
        """Restore every live seed from the newest checkpoint step they all hold; returns that step."""
        assert self.run_dir is not None
        info = read_seeds_file(self.run_dir)
        if info is None:
            raise MissingInputError(
                f"nothing to resume in {self.run_dir}: no {SEEDS_FILE} (not a seed-batched run folder)"
            )
        if info["seeds"] != self.seeds:
            raise InputError(
                f"{self.run_dir} trains seeds {info['seeds']}, not {self.seeds}: resume it with the same seeds"
            )
        self.stopped = info["stopped"]
        live = [k for k, s in enumerate(self.seeds) if s not in self.stopped]
        steps = []
        for k in live:
            latest = self.views[k].checkpoint_dir() / "latest"
            if not latest.exists():
                raise MissingInputError(f"nothing to resume in {self.views[k].run_dir}: no checkpoints/latest")
            steps.append(latest.read_text().strip())
        name = min(steps)  # a run killed while moving the pointers: some seeds point at the step before
        loaded = [self._read_checkpoint(k, name) for k in live]
        if len(live) < len(self.live):
            keep_seeds(self.model, live, self.optimizer)
            self.live = live
            self._bad_step = torch.full((len(live),), -1, dtype=torch.long, device=self.device)
        load_seed_state_dicts(self.model, [w for w, _ in loaded])
        states = [s for _, s in loaded]
        opt = states[0]["optimizer"]
        merged = {
            "state": {
                i: {
                    key: torch.stack([s["optimizer"]["state"][i][key] for s in states])
                    if torch.is_tensor(value) and value.dim() > 0
                    else value
                    for key, value in st.items()
                }
                for i, st in opt["state"].items()
            },
            "param_groups": opt["param_groups"],
        }
        self.optimizer.load_state_dict(merged)
        self.scheduler.load_state_dict(states[0]["scheduler"])
        for k, state in zip(live, states):
            view = self.views[k]
            view.generator.set_state(state["dropout_rng"])
            view.sampler.rng.bit_generator.state = state["sampler_rng"]
            view.history = state["history"]
            view.step = int(state["step"])
        self.step = int(states[0]["step"])
        return self.step

    def _read_checkpoint(self, k: int, name: str) -> tuple[dict, dict]:
        folder = self.views[k].checkpoint_dir() / name
        weights, state = load_checkpoint(folder, state_location=self.device)
        weights.pop(WEIGHTS_KEY, None)  # the agent's own record (algo, config), not a weight
        if "dropout_rng" not in state:
            raise InputError(f"checkpoint {folder} was not written by a seed-batched run (no dropout_rng)")
        state["dropout_rng"] = state["dropout_rng"].cpu()
        return weights, state


def summarize_seeds(per_seed: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target return: every seed's mean return and normalized score, their mean and standard error."""
    out: list[dict[str, Any]] = []
    evals = {s: r["eval"] for s, r in per_seed.items() if r.get("eval")}
    if not evals:
        return out
    first = next(iter(evals.values()))
    for i, ev in enumerate(first):
        row: dict[str, Any] = {"target_return": ev["target_return"], "seeds": sorted(evals)}
        for key, field in (("return", "returns"), ("score", "normalized")):
            values = [float(np.mean(evals[s][i][field])) for s in sorted(evals) if evals[s][i].get(field) is not None]
            if values:
                row[f"{key}_per_seed"] = values
                row[f"{key}_mean"] = float(np.mean(values))
                row[f"{key}_se"] = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
        out.append(row)
    return out


def _jsonable(x):
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


# ---------------------------------------------------------------------------------------------- fit
def fit_seeds(
    agent_config,
    dataset,
    config: TrainConfig | None = None,
    seeds: Sequence[int] = (0,),
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    env_name: str | None = None,
) -> dict[str, Any]:
    """Train one agent per seed in ``seeds`` on ``dataset`` as one seed-batched model (see the module doc).

    Seed k's agent is ``make_agent(agent_config, ..., seed=seeds[k])`` trained with ``replace(config,
    seed=seeds[k])``: what ``fit`` would train for that seed. Returns {"seeds", "stopped", "per_seed",
    "summary"}; with ``run_dir`` the folder layout of the module doc; ``resume=True`` continues it.
    """
    config = config or TrainConfig()
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("seeds is empty; give at least one seed")
    device = pick_device(config.device)
    check_memory(agent_config, len(seeds), device, dataset.obs_dim, dataset.act_dim)
    agents = []
    for seed in seeds:
        agent = make_agent(agent_config, dataset.obs_dim, dataset.act_dim, seed=seed, env_name=env_name)
        agent.to(device)
        agent.fit_normalization(dataset)
        agents.append(agent)
    trainer = SeedTrainer(agents, dataset, config, seeds, run_dir, progress=progress)
    if resume:
        if run_dir is None:
            raise ValueError("resume=True needs a run_dir")
        trainer.resume()
    return trainer.run()
