"""The training loop: updates, logging, periodic evaluation, atomic checkpoints and exact resume.

A run folder holds::

    config.json               TrainConfig + agent config (what produced the run)
    checkpoints/step_NNNNNNNN/ model.pt, agent.json (a loadable agent) + trainer.pt (optimizer, scheduler,
                              RNG states); written to a temp folder and renamed, so a killed run never
                              leaves a half checkpoint; checkpoints/latest names the newest
    events.out.tfevents.*     TensorBoard scalars: loss, lr, grad_norm, steps_per_s, eval returns/scores
    results.json              final evaluation (raw and D4RL-normalized returns per target return)
    learning_curve.png        loss and evaluation scores against update steps

The folder is claimed, replaced and cleaned as :mod:`flowrl.agents.run_folder` describes. Resuming
(``resume=True``) restores weights, optimizer, scheduler, the sampler's and torch's RNG states and the
step counter, so on CPU the final weights equal an uninterrupted run's bit for bit. A loss or gradient
norm that becomes NaN or infinite stops the run (:class:`flowrl.errors.DivergedError`) before it writes
another checkpoint, so the newest checkpoint is the last good one.

The pieces other trainers reuse: :func:`make_optimizer` (the one place the optimizer and schedule are
built, :mod:`flowrl.agents.optim`), :meth:`Trainer.update` (one gradient step),
:meth:`Trainer.save_checkpoint` / :meth:`Trainer.resume` (on :mod:`flowrl.agents.checkpoints`), and
:func:`train` (what :func:`fit` and :func:`flowrl.agents.distributed.fit_distributed` share once their
trainer is built).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from flowrl.agents.agent import Agent
from flowrl.agents.checkpoints import read_latest, write_checkpoint
from flowrl.agents.learning_curve import plot_learning_curve
from flowrl.agents.optim import make_optimizer
from flowrl.agents.run_folder import open_run_folder

from flowrl import atomic, tiny
from flowrl.errors import DivergedError, InputError
from flowrl.models.config import JsonConfig

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["TrainConfig", "Trainer", "check_bf16", "fit", "make_optimizer", "pick_device", "prepare", "train"]


@dataclass
class TrainConfig(JsonConfig):
    """How to train: budget, evaluation, checkpoints, device."""

    steps: int = 3000
    """Gradient updates in total (a resumed run continues up to this number)."""
    eval_every: int = 0
    """Evaluate every this many updates (0: only at the end)."""
    eval_episodes: int = 10
    """Episodes per target return at each evaluation."""
    num_envs: int = 10
    """Environments stepped together during evaluation."""
    target_returns: tuple[float, ...] = ()
    """Return-to-go targets for DT evaluation (empty: the env's defaults, e.g. hopper 3600 and 1800)."""
    max_episode_steps: int = 0
    """Cap on evaluation episode length (0: the env's own limit)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many updates (and at the end)."""
    keep_checkpoints: int = 2
    """Checkpoints to keep (oldest are deleted; the final one is always kept)."""
    log_every: int = 50
    """Write TensorBoard scalars every this many updates."""
    seed: int = 0
    """Seed for weights, batch sampling, dropout and evaluation."""
    device: str = "auto"
    """"auto" (cuda, then mps, then cpu), "cpu", "cuda", "cuda:1", ..."""
    bf16: bool = False
    """bfloat16 autocast for forward/backward (faster on CPUs with AMX and on GPUs); weights stay float32."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""
    eval_seed: int = 10_000
    """Evaluation episode i uses seed eval_seed + i (fixed across the run, so evaluations compare)."""
    eval_rollout: str = "auto"
    """DT evaluation context: auto (the model's own: episode for memory models, else window), window (last K
    steps), staggered or episode (flow only, faster)."""
    eval_workers: int = 1
    """Processes the evaluation episodes are split across (forked, one torch thread each; CPU agents only)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes stored with the run (e.g. the dataset string)."""

    def __post_init__(self) -> None:
        checks = [
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}"),
            (self.eval_episodes >= 0, f"eval_episodes must be >= 0, got {self.eval_episodes}"),
            (self.num_envs >= 1, f"num_envs must be >= 1, got {self.num_envs}"),
            (self.max_episode_steps >= 0, f"max_episode_steps must be >= 0, got {self.max_episode_steps}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}"),
            (self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}"),
            (self.threads >= 0, f"threads must be >= 0, got {self.threads}"),
            (self.eval_workers >= 1, f"eval_workers must be >= 1, got {self.eval_workers}"),
            (
                self.eval_rollout in ("auto", "window", "staggered", "episode"),
                f"eval_rollout must be auto, window, staggered or episode, got {self.eval_rollout!r}",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"TrainConfig: {msg}")
        self.target_returns = tuple(float(x) for x in self.target_returns)
        if not all(math.isfinite(x) for x in self.target_returns):
            raise InputError(f"TrainConfig: target_returns must be finite, got {list(self.target_returns)}")
        device = pick_device(self.device)  # validates the string
        if self.bf16:
            check_bf16(device)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        raise InputError(f"device {name!r} does not exist: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    return dev


def check_bf16(device: torch.device) -> None:
    """InputError when bfloat16 autocast is asked for on a GPU without bfloat16 support."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise InputError(f"--bf16: {name} does not support bfloat16; train in float32 (drop --bf16)")


class Trainer:
    """Owns the optimisation state of one agent on one dataset; ``run()`` trains up to ``config.steps``.

    ``batch_size`` overrides ``agent.config.batch_size`` as the number of samples drawn per update;
    ``sampler_seed`` the sampler's seed (default ``config.seed * 1000``). Another way of executing the
    same loop (several processes, see :class:`flowrl.agents.distributed.DistributedTrainer`) overrides
    the hooks :meth:`compute_loss`, :meth:`mean_over_processes`, :meth:`agree` and ``is_main``; the
    loop, the checkpoints and the files stay here.
    """

    is_main: bool = True
    """Whether this process logs, evaluates and writes files (one process: always)."""

    def __init__(
        self,
        agent: Agent,
        dataset,
        config: TrainConfig,
        run_dir: str | os.PathLike | None = None,
        *,
        progress: bool = True,
        batch_size: int | None = None,
        sampler_seed: int | None = None,
    ):
        self.agent, self.dataset, self.config = agent, dataset, tiny.shrink(config)  # FLOWRL_TINY (flowrl.tiny)
        config = self.config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        self.device = agent.device
        self.optimizer, self.scheduler = make_optimizer(agent.model, agent.config, self.device)
        seed = config.seed * 1000 if sampler_seed is None else sampler_seed
        self.sampler = agent.make_sampler(dataset, seed=seed)
        self.batch_size = int(batch_size or agent.config.batch_size)
        self.step = 0
        self.history: dict[str, list] = {"step": [], "loss": [], "eval_step": [], "eval_score": [], "eval_return": []}
        self.update_calls = 0
        self._writer: SummaryWriter | None = None

    # ------------------------------------------------------------------ hooks (one process)
    def compute_loss(self, batch) -> torch.Tensor:
        """The loss whose gradient one update follows."""
        return self.agent.loss(batch)

    def mean_over_processes(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of ``x`` over the processes training together (for logging); one process: ``x``."""
        return x

    def agree(self, fn):
        """Run ``fn`` where files are written and return its result everywhere (errors too); one process: ``fn()``."""
        return fn()

    # ------------------------------------------------------------------ checks before anything is written
    def check(self) -> None:
        """Everything that can be refused before the run touches its folder: the rollout settings, and the
        dataset's observation/action sizes against its environment (when the dataset names one). Each
        process reaches the same verdict; :func:`train` runs it where files are written (:meth:`agree`)."""
        cfg = self.config
        policy = self.agent.make_policy(rollout=self._rollout())  # e.g. staggered rollouts of a softmax model
        if cfg.eval_workers > 1 and self.agent.device.type != "cpu":
            raise InputError(f"eval_workers > 1 forks CPU processes; the agent is on {self.agent.device} (use 1)")
        env = self.eval_env()
        if env is None:
            return
        from flowrl.envs import check_compatible, check_episode_limit, make_env

        try:
            made = make_env(env)
        except InputError:
            if cfg.eval_episodes > 0:
                raise
            return  # the env cannot be made here (not installed, say): nothing to check it against
        try:
            check_compatible(self.dataset, made)
        finally:
            made.close()
        if cfg.eval_episodes > 0:
            check_episode_limit(policy, env, cfg.max_episode_steps or None)

    # ------------------------------------------------------------------ one update
    def update(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient step on ``batch``; returns (loss, grad_norm) as tensors (no host sync)."""
        self.update_calls += 1
        self.agent.model.train()
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.config.bf16 else contextlib.nullcontext()
        with amp:
            loss = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.agent.config.grad_clip
        params = self.agent.model.parameters()
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else math.inf, foreach=True)
        self.optimizer.step()
        self.scheduler.step()
        return loss.detach(), norm.detach()

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict[str, Any]:
        """Train up to ``config.steps``, evaluate, write results.json and the learning curve."""
        try:
            return self._run()
        finally:
            if self._writer is not None:  # flushed and closed also when the run fails
                self._writer.close()
                self._writer = None

    def _run(self) -> dict[str, Any]:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        bar = None
        if self.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.steps, initial=self.step, desc=f"train {self.agent.algo}", unit="step", dynamic_ncols=True
            )
        t0, s0 = time.perf_counter(), self.step
        window_loss = torch.zeros((), device=self.device)
        window_norm = torch.zeros((), device=self.device)
        window_n, checked = 0, self.step
        results: dict[str, Any] = {}
        final_eval = cfg.eval_episodes > 0
        while self.step < cfg.steps:
            loss, norm = self.update(self.sampler.sample(self.batch_size))
            self.step += 1
            window_loss += loss.float()
            window_norm += norm.float()
            window_n += 1
            last = self.step == cfg.steps
            log_now = self.step % cfg.log_every == 0 or last
            checkpoint_now = self.step % cfg.checkpoint_every == 0 or last
            if log_now or checkpoint_now:  # one host sync: a non-finite step poisons the window's sums
                mean_loss = float(self.mean_over_processes(window_loss)) / window_n
                mean_norm = float(window_norm) / window_n
                if not (math.isfinite(mean_loss) and math.isfinite(mean_norm)):
                    self._diverged(checked, mean_loss, mean_norm)
                checked = self.step
            if log_now:
                rate = (self.step - s0) / max(time.perf_counter() - t0, 1e-9)
                self._log_scalars(
                    {
                        "train/loss": mean_loss,
                        "train/grad_norm": mean_norm,
                        "train/lr": self.scheduler.get_last_lr()[0],
                        "train/steps_per_s": rate,
                    }
                )
                self.history["step"].append(self.step)
                self.history["loss"].append(mean_loss)
                window_loss.zero_(), window_norm.zero_()
                window_n = 0
                if bar is not None:
                    bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
            if bar is not None:
                bar.update(1)
            if cfg.eval_every and self.step % cfg.eval_every == 0 and not last:
                self.agree(self.evaluate)
            if checkpoint_now and not (last and final_eval):  # then after the final evaluation, below
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        results["train"] = {
            "steps": self.step,
            "steps_this_session": self.step - s0,
            "seconds": elapsed,
            "steps_per_s": (self.step - s0) / elapsed if elapsed > 0 else None,
            "final_loss": self.history["loss"][-1] if self.history["loss"] else None,
        }
        try:
            if final_eval:
                results["eval"] = self.agree(self.evaluate)
        finally:  # the last step's checkpoint holds the final evaluation in its history (and is written if it fails)
            self.save_checkpoint()  # no-op if the last step is already saved; every process calls it
        if self.run_dir is not None:
            self.agree(lambda: self._write_outputs(results))
        return results

    def _rollout(self) -> str | None:
        return None if self.config.eval_rollout == "auto" else self.config.eval_rollout

    def _diverged(self, since: int, loss: float, norm: float) -> None:
        what = "loss" if not math.isfinite(loss) else "gradient norm"
        value = loss if not math.isfinite(loss) else norm
        latest = self.checkpoint_dir() / "latest" if self.run_dir is not None else None
        kept = (
            f"the last good checkpoint is {latest.parent / latest.read_text().strip()}"
            if latest is not None and latest.is_file()
            else "no checkpoint was written"
        )
        raise DivergedError(
            f"training diverged: the {what} became {value} between steps {since + 1} and {self.step}; {kept}. "
            "Lower --lr, raise --warmup-steps or set --grad-clip, or check the dataset's rewards"
        )

    # ------------------------------------------------------------------ evaluation
    def eval_env(self) -> str | None:
        meta = self.dataset.metadata
        return self.agent.env_name or meta.get("gym_id") or meta.get("env_name")

    def evaluate(self) -> list[dict[str, Any]]:
        """Vectorized rollouts (main process only); logs and returns one dict per target return."""
        if not self.is_main or self.config.eval_episodes <= 0:
            return []
        from flowrl.envs import evaluate, get_spec

        env = self.eval_env()
        if env is None:
            print("note: the dataset names no environment; skipping evaluation")
            return []
        targets: tuple = (None,)
        if self.agent.algo == "dt":
            targets = self.config.target_returns or get_spec(env).target_returns or self.agent.dataset_targets()
        results = evaluate(
            self.agent.make_policy(rollout=self._rollout()),
            env,
            episodes=self.config.eval_episodes,
            num_envs=self.config.num_envs,
            seed=self.config.eval_seed,
            target_returns=targets,
            max_episode_steps=self.config.max_episode_steps or None,
            progress=self.progress,
            ref_scores=self.agent.reference_scores(),
            workers=self.config.eval_workers,
        )
        self.record_evaluation(results)
        return [r.to_dict() for r in results]

    def record_evaluation(self, results: list) -> None:
        """Log each target return's mean return (and normalized score) at ``step``, and add the best
        target's to the history (for the learning curve)."""
        for r in results:
            tag = "bc" if r.target_return is None else f"target_{r.target_return:g}"
            scalars = {f"eval/{tag}/return_mean": float(np.mean(r.returns))}
            if r.normalized is not None:
                scalars[f"eval/{tag}/normalized_mean"] = float(np.mean(r.normalized))
            self._log_scalars(scalars)
        best = max(results, key=lambda r: float(np.mean(r.returns)))
        self.history["eval_step"].append(self.step)
        self.history["eval_return"].append(float(np.mean(best.returns)))
        self.history["eval_score"].append(None if best.normalized is None else float(np.mean(best.normalized)))

    # ------------------------------------------------------------------ files
    def _log_scalars(self, scalars: dict[str, float]) -> None:
        if not self.is_main or self.run_dir is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.run_dir))
        for k, v in scalars.items():
            self._writer.add_scalar(k, v, self.step)

    def checkpoint_dir(self) -> Path:
        assert self.run_dir is not None
        return self.run_dir / "checkpoints"

    def save_checkpoint(self) -> Path | None:
        """Write ``checkpoints/step_NNNNNNNN`` (atomically), point ``latest`` at it, drop the oldest."""
        if not self.is_main or self.run_dir is None:
            return None
        keep = self.config.keep_checkpoints
        return write_checkpoint(self.checkpoint_dir(), self.step, self.agent, self.trainer_state, keep)

    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "sampler_rng": self.sampler.rng.bit_generator.state,
            "history": self.history,
        }

    def resume(self) -> int:
        """Restore the newest checkpoint of ``run_dir``; returns the step it resumes from."""
        self.load_state(*self.agree(self.read_checkpoint))
        return self.step

    def read_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(model weights, trainer state) of the newest checkpoint of ``run_dir``, on the CPU."""
        return read_latest(self.checkpoint_dir())

    def load_state(self, weights: dict[str, Any], state: dict[str, Any]) -> None:
        """Apply what :meth:`read_checkpoint` returned: weights, optimizer, scheduler, RNGs, step."""
        source = self.checkpoint_dir() / "latest" if self.run_dir is not None else "the checkpoint"
        self.agent.load_weights(weights, source, against="the agent being trained")
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["torch_rng"])
            self.sampler.rng.bit_generator.state = state["sampler_rng"]
            self.history = state["history"]
            self.step = int(state["step"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise InputError(f"{source}: the trainer state is not one flowrl wrote ({type(e).__name__}: {e})") from None

    def run_record(self) -> dict[str, Any]:
        """``config.json`` of a new run: algo, dataset, agent and train config."""
        dataset = self.config.extra.get("dataset") or self.dataset.metadata.get("source")
        return json_safe(
            {
                "algo": self.agent.algo,
                "dataset": dataset,
                "agent": self.agent.config.to_dict(),
                "train": self.config.to_dict(),
            }
        )

    def _write_outputs(self, results: dict[str, Any]) -> None:
        self._write_results(results)
        self._plot()

    def _write_results(self, results: dict[str, Any]) -> None:
        payload = {
            "algo": self.agent.algo,
            "attention": getattr(self.agent.config, "attention", None),
            "env": self.eval_env(),
            "dataset": self.config.extra.get("dataset"),
            **results,
        }
        assert self.run_dir is not None
        atomic.write_json(self.run_dir / "results.json", json_safe(payload))

    def _plot(self) -> None:
        assert self.run_dir is not None
        plot_learning_curve(self.history, self.run_dir / "learning_curve.png")


def json_safe(x: Any) -> Any:
    """``x`` with numpy values as Python ones and NaN/infinity as ``None``: JSON has no NaN, and a results
    file must parse with any reader."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ---------------------------------------------------------------------------------------- the shared setup
def prepare(agent: Agent, dataset, torch_seed: int) -> None:
    """Before a trainer is built: seed torch (weights drawn later, dropout) and take the dataset's
    statistics into the agent (state normalisation, env name, return range)."""
    torch.manual_seed(torch_seed)
    agent.fit_normalization(dataset)


def train(
    trainer: Trainer,
    *,
    resume: bool = False,
    overwrite: bool = False,
    on_start: Callable[[Trainer], None] | None = None,
) -> dict[str, Any]:
    """Check, claim the run folder, resume, train: what :func:`fit` and ``fit_distributed`` share.

    Nothing is written before :meth:`Trainer.check` and the folder checks pass. ``on_start(trainer)``
    runs in the main process once the run has started (the folder claimed, the checkpoint restored).
    """
    if resume and trainer.run_dir is None:
        raise ValueError("resume=True needs a run_dir")
    trainer.agree(trainer.check)
    with contextlib.ExitStack() as stack:
        if trainer.run_dir is not None:

            def claim():
                if not trainer.is_main:
                    return None
                record = None if resume else trainer.run_record()
                return stack.enter_context(
                    open_run_folder(trainer.run_dir, resume=resume, overwrite=overwrite, record=record)
                )

            folder = trainer.agree(claim)
            trainer.run_dir = Path(folder) if folder is not None else trainer.run_dir
        if resume:
            trainer.resume()
        if on_start is not None and trainer.is_main:
            on_start(trainer)
        return trainer.run()


def fit(
    agent: Agent,
    dataset,
    config: TrainConfig | None = None,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_start: Callable[[Trainer], None] | None = None,
) -> dict[str, Any]:
    """Train ``agent`` on ``dataset`` (a TrajectoryDataset); returns training and evaluation results.

    With ``run_dir``, writes config.json, checkpoints, TensorBoard events, results.json and
    learning_curve.png there (see :mod:`flowrl.agents.run_folder` for how the folder is claimed);
    ``resume=True`` continues from its latest checkpoint, ``overwrite=True`` replaces a previous run.
    """
    config = config or TrainConfig()
    prepare(agent, dataset, config.seed)
    trainer = Trainer(agent, dataset, config, run_dir, progress=progress)
    return train(trainer, resume=resume, overwrite=overwrite, on_start=on_start)
