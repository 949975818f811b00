"""Data-parallel training: 2 CPU processes (gloo) against one process with the same global batch.

The equivalence argument: DDP averages the ranks' gradients. If rank r's batch is exactly the r-th half
of the single-process batch and each rank's loss carries its share of the real tokens, the averaged
gradient is the single-process gradient up to float summation order, so clipping, AdamW and the
schedule take the same steps. ``_RankSlice`` builds the halves: every rank draws the same global batch
from the same seed and keeps its slice.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from flowrl.agents import BCConfig, DecisionTransformerConfig, TrainConfig, Trainer, fit, load_agent, make_agent
from flowrl.agents import distributed as ddp_mod
from flowrl.agents.distributed import (
    DistributedTrainer,
    distributed_env,
    fit_distributed,
    init_distributed,
    load_dataset_shared,
    per_rank_batch,
    rank_device,
)

from .conftest import TOY_ID, toy_dataset

WORLD = 2
GLOBAL_BATCH = 16
STEPS = 6
SAMPLER_SEED = 123
# Measured: max |w_ddp - w_single| ~1e-7 after 6 AdamW steps at lr 1e-3 (float32 summation order).
WEIGHT_ATOL = 1e-5
LOSS_RTOL = 1e-5

CONFIGS = {
    "flow-dt": lambda: DecisionTransformerConfig(
        context=6, dim=16, depth=2, heads=2, dropout=0.0, warmup_steps=2, lr=1e-3, batch_size=GLOBAL_BATCH
    ),
    "bc": lambda: BCConfig(hidden=16, layers=2, dropout=0.0, lr=1e-3, batch_size=GLOBAL_BATCH),
}


# ------------------------------------------------------------------------------------ harness
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn, port: int, args: tuple) -> None:
    """What torchrun would set up for ``rank`` on one machine, then ``fn(rank, *args)``."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    try:
        fn(rank, *args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(fn, *args) -> None:
    mp.spawn(_entry, args=(fn, _free_port(), args), nprocs=WORLD, join=True)


def _worker(rank: int, tmp: Path, npz: Path) -> None:
    """Everything the two ranks do, in one spawn: starting processes (torch, DDP's dynamo import) is
    the slowest part of these tests."""
    _equivalence_worker(rank, tmp)
    _fit_worker(rank, tmp, npz)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> tuple[Path, Path]:
    """(folder the ranks wrote into, the npz dataset they trained on)."""
    from flowrl.envs import write_npz

    tmp = tmp_path_factory.mktemp("ddp")
    npz = write_npz(tmp / "toy.npz", toy_dataset(episodes=12))
    _spawn(_worker, tmp, npz)
    return tmp, npz


class _RankSlice:
    """Rank ``rank``'s slice of the batch a single process would draw with the same seed."""

    def __init__(self, inner, rank: int, world: int):
        self.inner, self.rank, self.world = inner, rank, world

    @property
    def rng(self):
        return self.inner.rng

    def sample(self, n: int):
        full = self.inner.sample(n * self.world)
        lo, hi = self.rank * n, (self.rank + 1) * n
        return type(full)(*(None if f is None else f[lo:hi] for f in full))


class _Unweighted(DistributedTrainer):
    """DDP with a plain average of the ranks' per-token means (what the token weighting corrects)."""

    def compute_loss(self, batch):
        return self.agent.loss(batch, model=self.ddp)


def _agent(kind: str, ds, seed: int = 0):
    return make_agent(CONFIGS[kind](), ds.obs_dim, ds.act_dim, seed=seed)


def _weights(agent) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.model.state_dict().items()}


# ------------------------------------------------------------------------------------ pure functions
def test_distributed_env_parsing():
    assert distributed_env({}) is None
    env = distributed_env({"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.leader) == (5, 8, 1, 4, 4)
    assert distributed_env({"RANK": "0", "WORLD_SIZE": "1"}).local_world_size == 1
    with pytest.raises(ValueError, match="inconsistent"):
        distributed_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(ValueError, match="integers"):
        distributed_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_per_rank_batch():
    assert per_rank_batch(64, 4) == 64  # per rank: effective batch 256
    assert per_rank_batch(64, 4, global_batch=True) == 16
    with pytest.raises(ValueError, match="multiple of 3"):
        per_rank_batch(64, 3, global_batch=True)


def test_rank_device():
    assert rank_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        rank_device("cuda:1", 0)
    if not torch.cuda.is_available():
        assert rank_device("auto", 1) == torch.device("cpu")
        with pytest.raises(ValueError, match="not available"):
            rank_device("cuda", 0)


def test_init_outside_torchrun_says_how(monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        init_distributed(device="cpu")


# ------------------------------------------------------------------------------------ DDP == one process
def _equivalence_worker(rank: int, out: Path) -> None:
    init_distributed(device="cpu")
    ds = toy_dataset(episodes=30)  # 20-step episodes, context 6: many windows are padded, unevenly per rank
    cfg = TrainConfig(steps=STEPS, eval_episodes=0, log_every=1, device="cpu")
    runs = [("flow-dt", DistributedTrainer), ("bc", DistributedTrainer), ("flow-dt-unweighted", _Unweighted)]
    for name, cls in runs:
        agent = _agent(name.removesuffix("-unweighted"), ds)
        agent.fit_normalization(ds)
        trainer = cls(agent, ds, cfg, progress=False, batch_size=per_rank_batch(GLOBAL_BATCH, WORLD, global_batch=True))
        trainer.sampler = _RankSlice(agent.make_sampler(ds, seed=SAMPLER_SEED), rank, WORLD)
        trainer.run()
        torch.save({"weights": _weights(agent), "loss": trainer.history["loss"]}, out / f"{name}-{rank}.pt")


def _single_process(kind: str, ds):
    agent = _agent(kind, ds)
    agent.fit_normalization(ds)
    trainer = Trainer(agent, ds, TrainConfig(steps=STEPS, eval_episodes=0, log_every=1), progress=False)
    trainer.sampler = agent.make_sampler(ds, seed=SAMPLER_SEED)  # draws the whole global batch
    trainer.run()
    return _weights(agent), trainer.history["loss"]


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def test_two_processes_match_one_process_with_the_same_global_batch(spawned):
    tmp_path, _ = spawned
    ds = toy_dataset(episodes=30)
    for kind in ("flow-dt", "bc"):
        ref_w, ref_loss = _single_process(kind, ds)
        r0, r1 = (torch.load(tmp_path / f"{kind}-{r}.pt", weights_only=True) for r in range(WORLD))
        for k, v in r0["weights"].items():  # the replicas never drift apart
            assert torch.equal(v, r1["weights"][k]), (kind, k)
        assert _max_diff(r0["weights"], ref_w) < WEIGHT_ATOL, kind
        # the logged loss is the mean over every rank's tokens: the single-process loss, step by step
        np.testing.assert_allclose(r0["loss"], ref_loss, rtol=LOSS_RTOL, err_msg=kind)
        assert r0["loss"] == r1["loss"]
    # the test can tell: without the token weighting, DT's uneven padding makes the update differ
    plain = torch.load(tmp_path / f"flow-dt-unweighted-{0}.pt", weights_only=True)
    assert _max_diff(plain["weights"], _single_process("flow-dt", ds)[0]) > 10 * WEIGHT_ATOL


# ------------------------------------------------------------------------------------ fit_distributed end to end
# dropout on (0.1): exact resume needs every rank's torch RNG
DT_RUN = dict(context=6, dim=16, depth=2, heads=2, warmup_steps=2, batch_size=8)


def _fit_worker(rank: int, tmp: Path, npz: Path) -> None:
    report: dict = {}
    ddp_mod._SHARE_MIN_BYTES = 0  # share even this tiny dataset through files
    shm = tmp / "shm"
    shm.mkdir(exist_ok=True)
    try:
        load_dataset_shared(str(tmp / "missing.npz"), device="cpu", share_dir=shm)
    except (FileNotFoundError, ValueError) as e:  # rank 0's loading error reaches every rank
        report["load_error"] = type(e).__name__
    ds = load_dataset_shared(str(npz), device="cpu", share_dir=shm)
    report["mapped"] = all(_is_mapped(getattr(ds, k)) for k in ("observations", "actions", "returns_to_go"))
    report["writeable"] = bool(ds.observations.flags.writeable)
    report["obs_sum"] = float(ds.observations.astype(np.float64).sum())
    dist.barrier()
    report["shm_left"] = sorted(p.name for p in shm.iterdir())

    cfg = TrainConfig(
        steps=STEPS, checkpoint_every=3, log_every=2, eval_episodes=2, num_envs=2, max_episode_steps=5, device="cpu"
    )
    try:
        fit_distributed(
            make_agent(DecisionTransformerConfig(**DT_RUN), ds.obs_dim, ds.act_dim, seed=0),
            ds,
            cfg,
            tmp / "empty",
            resume=True,
            progress=False,
            shutdown=False,
        )
    except FileNotFoundError:  # rank 0 found nothing to resume; every rank hears it
        report["resume_error"] = True

    full = make_agent(DecisionTransformerConfig(**DT_RUN), ds.obs_dim, ds.act_dim, seed=0)
    report["results"] = fit_distributed(full, ds, cfg, tmp / "full", progress=False, global_batch=True, shutdown=False)
    split = make_agent(DecisionTransformerConfig(**DT_RUN), ds.obs_dim, ds.act_dim, seed=0)
    fit_distributed(
        split,
        ds,
        replace(cfg, steps=3, eval_episodes=0),
        tmp / "split",
        progress=False,
        global_batch=True,
        shutdown=False,
    )
    resumed = make_agent(DecisionTransformerConfig(**DT_RUN), ds.obs_dim, ds.act_dim, seed=0)
    fit_distributed(
        resumed, ds, replace(cfg, eval_episodes=0), tmp / "split", resume=True, progress=False, global_batch=True
    )  # shutdown=True: destroys the group
    report["group_closed"] = not dist.is_initialized()
    torch.save({"full": _weights(full), "resumed": _weights(resumed)}, tmp / f"weights-{rank}.pt")
    (tmp / f"report-{rank}.json").write_text(json.dumps(report))


def _is_mapped(arr: np.ndarray) -> bool:
    base = arr
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return isinstance(base, mmap.mmap) and not arr.flags.writeable


def test_fit_distributed_runs_checkpoints_resumes_and_loads_in_one_process(spawned):
    from flowrl.envs import evaluate

    tmp_path, _ = spawned
    data = toy_dataset(episodes=12)
    reports = [json.loads((tmp_path / f"report-{r}.json").read_text()) for r in range(WORLD)]
    weights = [torch.load(tmp_path / f"weights-{r}.pt", weights_only=True) for r in range(WORLD)]

    for rep in reports:
        assert rep["load_error"] in ("MissingInputError", "InputError") and rep["resume_error"]
        # one copy per machine: read-only memory maps of files that are already unlinked
        assert rep["mapped"] and not rep["writeable"] and rep["shm_left"] == []
        assert rep["obs_sum"] == pytest.approx(float(data.observations.astype(np.float64).sum()))
        assert rep["group_closed"]
    # every rank returns rank 0's results, evaluation included
    assert reports[0]["results"] == reports[1]["results"]
    res = reports[0]["results"]
    assert res["train"]["steps"] == STEPS and res["eval"] and np.isfinite(res["eval"][0]["returns"]).all()
    assert res["distributed"] == {"world_size": 2, "per_rank_batch": 4, "global_batch": 8, "backend": "gloo"}

    run = tmp_path / "full"
    saved = json.loads((run / "results.json").read_text())
    assert saved["distributed"]["global_batch"] == 8
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000003", "step_00000006"]
    state = torch.load(run / "checkpoints" / "step_00000006" / "trainer.pt", weights_only=True)
    assert state["world_size"] == WORLD and len(state["rank_states"]) == WORLD
    assert state["rank_states"][0]["sampler_rng"] != state["rank_states"][1]["sampler_rng"]  # own streams

    # replicas agree, and 3 steps + resume to 6 equals 6 steps, bit for bit (every rank's RNGs restored)
    for k, v in weights[0]["full"].items():
        assert torch.equal(v, weights[1]["full"][k]), k
        assert torch.equal(v, weights[0]["resumed"][k]), k

    # the DDP checkpoint is an ordinary one: it loads, acts and evaluates in this single process ...
    agent = load_agent(run)
    for k, v in agent.model.state_dict().items():
        assert torch.equal(v, weights[0]["full"][k]), k
    (r,) = evaluate(
        agent.make_policy(), TOY_ID, episodes=2, num_envs=2, target_returns=(5.0,), max_episode_steps=5, progress=False
    )
    assert len(r.returns) == 2 and np.isfinite(r.returns).all()
    # ... and single-process training resumes from it
    more = fit(
        make_agent(agent.config, agent.obs_dim, agent.act_dim, seed=1),
        data,
        TrainConfig(steps=STEPS + 2, eval_episodes=0, log_every=1),
        run,
        resume=True,
        progress=False,
    )
    assert more["train"]["steps"] == STEPS + 2 and more["train"]["steps_this_session"] == 2


# ------------------------------------------------------------------------------------ the CLI under torchrun
@pytest.mark.slow  # ~30 s on a loaded 2-core machine: torchrun plus two full interpreter starts, twice
def test_torchrun_flowrl_train_end_to_end(tmp_path):
    import subprocess
    import sys

    from flowrl.envs import write_npz

    npz = write_npz(tmp_path / "toy.npz", toy_dataset(episodes=12))
    run = tmp_path / "run"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD)]
    common = ["--quiet", "--device", "cpu", "--eval-episodes", "0", "--checkpoint-every", "2", "--out", str(run)]
    tiny = ["--context", "5", "--dim", "16", "--depth", "1", "--heads", "2", "--batch-size", "8", "--global-batch"]

    def train(*args: str) -> subprocess.CompletedProcess:
        cmd = [*torchrun, "-m", "flowrl.scripts", "train", *args, *common]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)

    first = train("--dataset", str(npz), "--steps", "4", *tiny)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("final loss") == 1  # only rank 0 prints
    results = json.loads((run / "results.json").read_text())
    assert results["train"]["steps"] == 4
    assert results["distributed"] == {"world_size": 2, "per_rank_batch": 4, "global_batch": 8, "backend": "gloo"}
    second = train("--resume", "--steps", "6")
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["train"]["steps_this_session"] == 2
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000004", "step_00000006"]
    agent = load_agent(run)
    assert agent.act(np.zeros((3, 2), np.float32), np.ones(3)).shape == (1,)
