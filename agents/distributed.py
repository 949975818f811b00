"""Data-parallel training under ``torchrun`` with DistributedDataParallel (DDP).

Launch one process per GPU (or per CPU socket) with PyTorch's own launcher; flowrl adds no launcher::

    torchrun --nproc_per_node 4 -m flowrl.scripts train --dataset hopper-medium-v2 ...

What each process does (``fit_distributed``):

- **Process group.** :func:`init_distributed` reads torchrun's variables (``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), puts each rank on
  ``cuda:LOCAL_RANK`` when the device is ``auto``/``cuda`` and CUDA exists, and opens the group with
  backend ``"cpu:gloo,cuda:nccl"`` on GPUs (NCCL for the gradients, gloo for small CPU objects) or
  ``"gloo"`` on CPUs. The timeout is ``FLOWRL_DDP_TIMEOUT`` seconds (default 3600): the other ranks
  wait inside a collective while rank 0 evaluates or writes a checkpoint.
- **Data.** :func:`load_dataset_shared` loads the dataset once per machine (local rank 0), writes its
  large arrays to ``.npy`` files in ``/dev/shm`` (or the temp folder when ``/dev/shm`` is too small), and
  every rank of that machine memory-maps them read-only; the files are unlinked as soon as all ranks have
  mapped them, so one copy lives in the page cache per machine instead of one per rank, and nothing
  is left behind. Rank 0 loads before the other machines' leaders, so a download cache is filled once.
- **Batches.** Each rank samples its own batch from its own seed stream (``seed * 1000 + rank``, see
  :class:`~flowrl.agents.trainer.Trainer`). By default ``batch_size`` is per rank and the effective
  (global) batch is ``batch_size × world_size``. With ``global_batch=True`` ``batch_size`` is the global
  batch and each rank draws ``batch_size // world_size`` (it must divide), so the update matches
  single-process training with ``batch_size``.
- **Gradients.** DDP all-reduces (averages) gradients during ``backward``. The DT loss is a mean over a
  rank's real (unpadded) tokens, and ranks hold different numbers of them, so each rank's loss is
  weighted by ``its tokens × world_size / all tokens`` (one scalar all-reduce per step): the averaged
  gradient is then exactly the gradient of the mean over every real token of the global batch, as in
  one process. Gradient clipping, AdamW and the schedule then run identically on every rank.
- **Files.** Only rank 0 logs to TensorBoard, shows progress, evaluates, and writes checkpoints,
  ``results.json`` and the plot; the logged loss is the mean over all ranks. Every rank takes part in
  each checkpoint: their sampler and torch RNG states are gathered into the checkpoint
  (``trainer.pt["rank_states"]``), so resuming on the same number of ranks continues every rank's
  stream exactly where it stopped (on CPU the weights equal an uninterrupted run's). On resume rank 0
  reads the checkpoint and broadcasts it, so other machines need no shared filesystem. A resume on a
  different number of ranks restores weights, optimizer and schedule; ranks without a saved stream get
  fresh ones derived from ``(seed, rank, step)``. A DDP checkpoint is an ordinary checkpoint:
  :func:`flowrl.agents.load_agent` and single-process ``fit(resume=True)`` read it.
- **Exit.** :func:`fit_distributed` returns rank 0's results on every rank, so all ranks leave together,
  then destroys the process group (``shutdown=True``).

Programmatic use (inside a script started by torchrun)::

    from flowrl.agents.distributed import fit_distributed, load_dataset_shared
    ds = load_dataset_shared("hopper-medium-v2", device="auto")
    agent = make_agent(DecisionTransformerConfig(), ds.obs_dim, ds.act_dim, seed=0)
    fit_distributed(agent, ds, TrainConfig(steps=3000), "runs/hopper-ddp", global_batch=True)
"""

from __future__ import annotations

import inspect
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from flowrl.agents.agent import Agent
from flowrl.agents.trainer import TrainConfig, Trainer, prepare, train
from torch.nn.parallel import DistributedDataParallel

from flowrl.errors import InputError

__all__ = [
    "DistributedEnv",
    "DistributedTrainer",
    "distributed_env",
    "fit_distributed",
    "init_distributed",
    "is_main_process",
    "load_dataset_shared",
    "per_rank_batch",
    "rank_device",
    "shutdown_distributed",
]

TIMEOUT_ENV = "FLOWRL_DDP_TIMEOUT"
DEFAULT_TIMEOUT_S = 3600.0
_SHARE_MIN_BYTES = 1 << 20  # smaller arrays travel inside the pickled metadata


# ---------------------------------------------------------------------------------------- launch
@dataclass(frozen=True)
class DistributedEnv:
    """Where this process sits in a torchrun job (from its environment variables)."""

    rank: int
    """Global rank, 0 .. world_size - 1."""
    world_size: int
    """Processes in the job, over all machines."""
    local_rank: int
    """Rank on this machine; picks the GPU."""
    local_world_size: int
    """Processes on this machine."""

    @property
    def leader(self) -> int:
        """Global rank of this machine's local rank 0 (torchrun numbers a machine's ranks contiguously)."""
        return self.rank - self.local_rank


def distributed_env(environ: dict[str, str] | None = None) -> DistributedEnv | None:
    """The torchrun placement of this process, or None when it was not started by torchrun.

    Raises ValueError for malformed or inconsistent variables.
    """
    env = os.environ if environ is None else environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    try:
        rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
        local_rank = int(env.get("LOCAL_RANK", "0"))
        # Without LOCAL_WORLD_SIZE (a hand-made launch) nothing is known about neighbours: share nothing.
        local_world = int(env.get("LOCAL_WORLD_SIZE", "1"))
    except ValueError:
        raise InputError(
            "RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be integers (launch with torchrun)"
        ) from None
    if not (world >= 1 and 0 <= rank < world and 0 <= local_rank < max(local_world, 1) and local_rank <= rank):
        raise InputError(
            f"inconsistent torchrun variables: RANK={rank} WORLD_SIZE={world} "
            f"LOCAL_RANK={local_rank} LOCAL_WORLD_SIZE={local_world}"
        )
    return DistributedEnv(rank, world, local_rank, local_world)


def rank_device(name: str, local_rank: int) -> torch.device:
    """The device of the rank with ``local_rank`` for a ``TrainConfig.device`` string.

    ``auto`` and ``cuda`` mean ``cuda:LOCAL_RANK`` when CUDA exists (``auto`` falls back to the CPU; MPS
    has no DDP backend); ``cpu`` is the CPU. An explicit ``cuda:N`` is refused: every rank would take
    the same GPU; restrict GPUs with ``CUDA_VISIBLE_DEVICES`` instead.
    """
    if name == "cpu":
        return torch.device("cpu")
    if name not in ("auto", "cuda"):
        raise InputError(
            f"device {name!r} cannot be used with torchrun: each rank takes cuda:LOCAL_RANK; pass --device cuda "
            "(or auto, or cpu) and choose GPUs with CUDA_VISIBLE_DEVICES"
        )
    if not torch.cuda.is_available():
        if name == "cuda":
            raise InputError("device 'cuda' requested but CUDA is not available; use --device cpu")
        return torch.device("cpu")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise InputError(
            f"LOCAL_RANK {local_rank} needs GPU {local_rank} but only {count} are visible; "
            f"use --nproc_per_node {count} or fewer"
        )
    return torch.device("cuda", local_rank)


def init_distributed(
    backend: str | None = None, *, device: str = "auto", timeout_s: float | None = None
) -> torch.device:
    """Join the torchrun job (idempotent) and return this rank's device.

    Args:
        backend: ``None`` picks ``"cpu:gloo,cuda:nccl"`` on GPUs and ``"gloo"`` on CPUs; or any backend
            string :func:`torch.distributed.init_process_group` accepts.
        device: a ``TrainConfig.device`` string, see :func:`rank_device`.
        timeout_s: collective timeout (default ``$FLOWRL_DDP_TIMEOUT`` or 3600 s); the other ranks wait
            this long at most while rank 0 evaluates.
    """
    env = distributed_env()
    if env is None:
        if dist.is_available() and dist.is_initialized():  # a group made by the caller without torchrun
            return rank_device(device, int(os.environ.get("LOCAL_RANK", "0")))
        raise RuntimeError(
            "not started by torchrun (RANK and WORLD_SIZE are unset): launch with "
            "`torchrun --nproc_per_node N -m flowrl.scripts train ...`, or train in one process with fit()"
        )
    dev = rank_device(device, env.local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_initialized():
        return dev
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    if backend is None:
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
    if timeout_s is None:
        timeout_s = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return dev


def shutdown_distributed() -> None:
    """Wait for every rank, then destroy the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on global rank 0 (and in a plain single-process run): the rank that may write files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    env = distributed_env()
    return env is None or env.rank == 0


def per_rank_batch(batch_size: int, world_size: int, *, global_batch: bool = False) -> int:
    """Samples each rank draws per update.

    ``global_batch=False``: ``batch_size`` per rank (effective batch ``batch_size × world_size``).
    ``global_batch=True``: ``batch_size`` is the global batch, split evenly over the ranks.
    """
    if batch_size < 1 or world_size < 1:
        raise InputError(f"batch_size and world_size must be >= 1, got {batch_size} and {world_size}")
    if not global_batch:
        return batch_size
    if batch_size % world_size:
        raise InputError(
            f"global batch {batch_size} does not split evenly over {world_size} processes; "
            f"use a multiple of {world_size} (e.g. {batch_size - batch_size % world_size or world_size})"
        )
    return batch_size // world_size


# ---------------------------------------------------------------------------------------- data
def load_dataset_shared(
    source: str | os.PathLike | Callable[[], Any],
    *,
    device: str = "auto",
    backend: str | None = None,
    share: bool = True,
    share_dir: str | os.PathLike | None = None,
    **load_kw: Any,
):
    """The dataset for every rank, loaded once per machine.

    Args:
        source: a dataset string for ``flowrl.envs.load_dataset(source, **load_kw)``, or a function that
            returns a TrajectoryDataset (e.g. one that first builds a missing dataset): it runs only on
            one rank per machine, rank 0 first.
        device, backend: passed to :func:`init_distributed` (the process group is joined first).
        share: False makes every rank load its own copy.
        share_dir: where the shared files go (default ``/dev/shm`` when it has room, else the temp folder).

    Local rank 0 loads and writes the large arrays there; the machine's ranks memory-map them read-only
    and the files are unlinked once everyone has mapped them. One rank per machine, or an export that
    fails (no space), fall back to every rank loading its own copy. A loading error on any machine is
    raised on every rank.
    """
    init_distributed(backend, device=device)
    env = distributed_env()

    def load():
        if callable(source):
            return source()
        from flowrl.envs import load_dataset

        return load_dataset(source, **load_kw)

    if env is None:  # a group made by hand: no placement known, so no sharing
        return load()

    def lead() -> dict[str, Any]:
        try:
            ds = load()
        except Exception as e:  # sent to every rank, raised there
            return {"error": e}
        if not share or env.local_world_size == 1:
            return {"local": ds}
        return _export(ds, share_dir)

    mine: dict[str, Any] | None = None
    if env.rank == 0:
        mine = lead()
    if env.world_size > env.local_world_size:
        # Several machines: rank 0 first, so a shared download cache is filled once, not raced.
        box: list[Any] = [_public(mine) if env.rank == 0 else None]  # rank 0's payload everywhere after this
        dist.broadcast_object_list(box, src=0)
        if "error" in box[0]:
            raise box[0]["error"]
    if env.local_rank == 0 and env.rank != 0:
        mine = lead()
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, _public(mine))
    for payload in gathered:
        if payload is not None and "error" in payload:
            _cleanup(mine)
            raise payload["error"]
    ours = gathered[env.leader]
    try:
        if mine is not None and "local" in mine:
            ds = mine["local"]
        elif ours is not None and "shared" in ours:
            ds = _attach(ours["shared"])
        else:  # no sharing on this machine
            ds = load()
        dist.barrier()  # every rank has mapped the files: the names can go, the mappings stay
    finally:
        _cleanup(mine)
    if env.rank == 0 and ours is not None and "note" in ours:
        print(f"note: {ours['note']}")
    return ds


def _public(payload: dict[str, Any] | None) -> dict[str, Any] | None:
    """What other ranks receive: never a whole dataset."""
    if payload is None or "local" not in payload:
        return payload
    return {"local_each": True}


def _share_root(need: int, share_dir: str | os.PathLike | None) -> str:
    if share_dir is not None:
        return str(share_dir)
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK):
        st = os.statvfs(shm)
        if st.f_bavail * st.f_frsize > need * 1.1 + (64 << 20):  # containers often give /dev/shm 64 MiB
            return shm
    # Files on disk are shared through the page cache just the same; writing them costs disk I/O once.
    return tempfile.gettempdir()


def _export(ds, share_dir) -> dict[str, Any]:
    """Write ``ds``'s large arrays to ``.npy`` files; returns {"shared": info} or {"local": ds, "note": why}."""
    fields = getattr(ds, "__dict__", None)
    if fields is None:
        return {"local": ds, "note": f"{type(ds).__name__} cannot be shared; every rank loads its own copy"}
    big = {
        k: v
        for k, v in fields.items()
        if isinstance(v, np.ndarray) and v.nbytes >= max(_SHARE_MIN_BYTES, 1) and not v.dtype.hasobject
    }
    rest = {k: v for k, v in fields.items() if k not in big}
    if not big:  # small dataset: pickling it to the other ranks is cheaper than files
        return {"shared": {"cls": type(ds), "folder": None, "arrays": [], "rest": pickle.dumps(rest)}}
    folder = None
    try:
        folder = tempfile.mkdtemp(
            prefix="flowrl-dataset-", dir=_share_root(sum(v.nbytes for v in big.values()), share_dir)
        )
        for k, v in big.items():
            np.save(os.path.join(folder, f"{k}.npy"), v, allow_pickle=False)
    except OSError as e:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        return {"local": ds, "note": f"could not share the dataset ({e}); every rank loads its own copy"}
    return {"shared": {"cls": type(ds), "folder": folder, "arrays": list(big), "rest": pickle.dumps(rest)}}


def _attach(info: dict[str, Any]):
    """The exported dataset with its large arrays memory-mapped (read-only) from ``info['folder']``."""
    ds = object.__new__(info["cls"])  # as unpickling does: the arrays are already validated
    ds.__dict__.update(pickle.loads(info["rest"]))
    for k in info["arrays"]:
        # np.asarray drops the memmap subclass; the view keeps the mapping alive.
        ds.__dict__[k] = np.asarray(np.load(os.path.join(info["folder"], f"{k}.npy"), mmap_mode="r"))
    return ds


def _cleanup(mine: dict[str, Any] | None) -> None:
    if mine is not None and mine.get("shared", {}).get("folder"):
        shutil.rmtree(mine["shared"]["folder"], ignore_errors=True)
        mine["shared"]["folder"] = None


# ---------------------------------------------------------------------------------------- training
class DistributedTrainer(Trainer):
    """The :class:`Trainer` loop for one rank of an initialized process group.

    The agent's model trains through a DistributedDataParallel wrapper (``self.ddp``) that the agent's
    loss runs its forward with; the Trainer's hooks are filled in for several processes: a token-weighted
    loss, logging means over ranks, rank 0 alone writing files and evaluating (its results and errors
    broadcast to every rank, so no rank waits forever for one that failed), every rank's RNG state in
    each checkpoint.

    ``batch_size`` is what this rank draws per update (see :func:`per_rank_batch`). Build it after
    :func:`flowrl.agents.trainer.prepare` on every rank: DDP copies rank 0's weights and buffers (the
    state statistics) once, here.
    """

    def __init__(
        self,
        agent: Agent,
        dataset,
        config: TrainConfig,
        run_dir: str | os.PathLike | None = None,
        *,
        progress: bool = True,
        batch_size: int | None = None,
    ):
        if not dist.is_initialized():
            raise RuntimeError("DistributedTrainer needs a process group: call init_distributed() first")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        super().__init__(
            agent,
            dataset,
            config,
            run_dir,
            progress=progress,
            batch_size=batch_size,
            sampler_seed=config.seed * 1000 + self.rank,  # each rank its own stream
        )
        device = agent.device
        # Buffers (state mean/std) are copied from rank 0 once, here, and never change in training: no
        # per-forward broadcast (the argument was renamed in recent PyTorch).
        no_sync: dict[str, Any] = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
            else {"broadcast_buffers": False}
        )
        self.ddp = DistributedDataParallel(
            agent.model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync
        )
        self._rank_states: list[dict[str, Any]] | None = None

    def compute_loss(self, batch) -> torch.Tensor:
        loss = self.agent.loss(batch, model=self.ddp)  # the forward through DDP: gradients are all-reduced
        mask = getattr(batch, "mask", None)  # DT batches: the loss is a mean over mask.sum() real tokens
        if mask is None or self.world_size == 1:
            return loss  # equal-sized batches: DDP's plain average is already the global mean
        count = torch.tensor(float(np.sum(mask)), device=self.device)
        total = count.clone()
        dist.all_reduce(total)
        return loss * (count * self.world_size / total)

    def mean_over_processes(self, x: torch.Tensor) -> torch.Tensor:
        y = x.detach().clone()
        dist.all_reduce(y)
        return y / self.world_size

    def agree(self, fn):
        """``fn()`` on rank 0; its result, or its exception, on every rank."""
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn())
            except Exception as e:  # raised on every rank, not only on rank 0
                box[0] = ("error", e)
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise value
        return value

    # -------------------------------------------------------------- checkpoints and resume
    def _own_rng_state(self) -> dict[str, Any]:
        state = {"sampler_rng": self.sampler.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def save_checkpoint(self) -> Path | None:
        if self.run_dir is None:
            return None
        # Collective: every rank reaches the same checkpoint steps (Trainer.run calls this on every rank).
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(self._own_rng_state(), gathered, dst=0)
        self._rank_states = gathered
        return self.agree(super().save_checkpoint)

    def trainer_state(self) -> dict[str, Any]:
        state = super().trainer_state()
        state["world_size"] = self.world_size
        state["rank_states"] = self._rank_states
        return state

    def resume(self) -> int:
        """Rank 0 reads the newest checkpoint and broadcasts it; every rank restores it and its own RNGs."""
        weights, state = self.agree(self.read_checkpoint)
        self.load_state(weights, state)  # rank 0's RNG states; replaced below
        saved = state.get("rank_states") or []
        if self.rank < len(saved) and saved[self.rank] is not None:
            own = saved[self.rank]
            self.sampler.rng.bit_generator.state = own["sampler_rng"]
            torch.set_rng_state(own["torch_rng"])
            if "cuda_rng" in own and self.device.type == "cuda":
                torch.cuda.set_rng_state(own["cuda_rng"], self.device)
        elif self.rank > 0:  # written on fewer ranks (or in one process): a fresh, reproducible stream
            seq = np.random.SeedSequence([self.config.seed, self.rank, self.step])
            self.sampler.rng = np.random.default_rng(seq)
            torch.manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
        if self.is_main and len(saved) not in (0, self.world_size):
            print(f"note: resuming a checkpoint written by {len(saved)} processes on {self.world_size}")
        return self.step

    def distributed_info(self) -> dict[str, Any]:
        """World size, per-rank and global batch, backend (stored in results.json)."""
        return {
            "world_size": self.world_size,
            "per_rank_batch": self.batch_size,
            "global_batch": self.batch_size * self.world_size,
            "backend": str(dist.get_backend()),
        }

    def _write_results(self, results: dict[str, Any]) -> None:
        super()._write_results({**results, "distributed": self.distributed_info()})


def _rank_seed(seed: int, rank: int) -> int:
    """Torch seed (dropout) per rank: rank 0 keeps ``seed`` as in single-process ``fit``."""
    if rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def fit_distributed(
    agent: Agent,
    dataset,
    config: TrainConfig | None = None,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    global_batch: bool = False,
    backend: str | None = None,
    shutdown: bool = True,
    on_start: Callable[[Trainer], None] | None = None,
) -> dict[str, Any]:
    """:func:`flowrl.agents.fit` for one rank of a torchrun job; call it on every rank with the same arguments.

    Joins the process group if needed (:func:`init_distributed` with ``config.device``), moves the agent
    to this rank's device, trains with DDP and returns rank 0's results (including its evaluation) on
    every rank. ``global_batch=True`` splits ``agent.config.batch_size`` over the ranks instead of
    drawing it on each (see :func:`per_rank_batch`). ``shutdown=False`` keeps the process group open
    for further collectives. ``resume``, ``overwrite`` and ``on_start`` as in :func:`flowrl.agents.fit`
    (the run folder is rank 0's).
    """
    config = config or TrainConfig()
    device = init_distributed(backend, device=config.device)
    rank, world = dist.get_rank(), dist.get_world_size()
    batch = per_rank_batch(agent.config.batch_size, world, global_batch=global_batch)
    agent.to(device)
    prepare(agent, dataset, _rank_seed(config.seed, rank))
    trainer = DistributedTrainer(agent, dataset, config, run_dir, progress=progress, batch_size=batch)
    results = train(trainer, resume=resume, overwrite=overwrite, on_start=on_start)
    results["distributed"] = trainer.distributed_info()
    box: list[Any] = [results if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)  # also keeps ranks together until rank 0 is done writing
    if shutdown:
        shutdown_distributed()
    return box[0]
