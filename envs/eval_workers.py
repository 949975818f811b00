"""``evaluate(..., workers=W)``: the episodes split across W forked processes, each a
:class:`~flowrl.envs.rollout_runner.Runner` over its share with one torch thread (see
:mod:`flowrl.envs.evaluation`)."""

from __future__ import annotations

import multiprocessing
import pickle
import queue as queue_lib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowrl.errors import InputError

from .observations import ObservationMap
from .rollout_runner import Runner
from .specs import EnvSpec

if TYPE_CHECKING:
    from .evaluation import Policy

__all__ = ["Workers", "check_workers"]


def check_workers(workers: int, episodes: int, vectorization: str, video_path: Path | None) -> int:
    if not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be an integer >= 1, got {workers!r}")
    workers = min(workers, episodes)
    if workers == 1:
        return 1
    if video_path is not None:
        raise InputError("video recording needs workers=1")
    if vectorization != "sync":
        raise InputError("workers > 1 steps 'sync' environments in each worker; vectorization='async' needs workers=1")
    if "fork" not in multiprocessing.get_all_start_methods():
        raise InputError("workers > 1 needs the 'fork' start method (Linux, macOS); use workers=1 here")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        raise InputError("workers > 1 forks the policy, and CUDA cannot be used after a fork; use workers=1")
    return workers


class Workers:
    """The episodes split across forked processes, each a :class:`Runner` over its share (same interface)."""

    def __init__(
        self,
        spec: EnvSpec,
        n: int,
        limit: int,
        env_kwargs: Mapping[str, Any] | None,
        workers: int,
        obs_map: ObservationMap | None = None,
    ):
        self.spec, self.n, self.limit, self.env_kwargs, self.workers = spec, n, limit, env_kwargs, workers
        self.obs_map = obs_map
        self.ctx = multiprocessing.get_context("fork")

    def close(self) -> None:
        pass

    def run(self, policy: Policy, episodes: int, seed: int, target: float | None, record: bool, bar):
        shares = [s for s in np.array_split(np.arange(episodes), self.workers) if len(s)]
        envs_each = -(-self.n // len(shares))
        messages = self.ctx.Queue()
        procs = [
            self.ctx.Process(
                target=_worker_main,
                args=(
                    messages,
                    w,
                    policy,
                    self.spec,
                    min(envs_each, len(share)),
                    self.limit,
                    self.env_kwargs,
                    self.obs_map,
                    seed + int(share[0]),
                    len(share),
                    target,
                ),
                daemon=True,
            )
            for w, share in enumerate(shares)
        ]
        returns = np.zeros(episodes, dtype=np.float64)
        lengths = np.zeros(episodes, dtype=np.int64)
        success = np.zeros(episodes, dtype=bool)
        rule = False
        try:
            for p in procs:
                p.start()
            pending = set(range(len(procs)))
            while pending:
                try:
                    msg = messages.get(timeout=1.0)
                except queue_lib.Empty:
                    dead = [w for w in pending if procs[w].exitcode is not None]
                    if dead:
                        code = procs[dead[0]].exitcode
                        raise RuntimeError(f"evaluation worker {dead[0]} died (exit code {code})") from None
                    continue
                kind, w = msg[0], msg[1]
                if kind == "episode":
                    bar.update(1)
                elif kind == "done":
                    first = int(shares[w][0])
                    returns[first : first + len(shares[w])] = msg[2]
                    lengths[first : first + len(shares[w])] = msg[3]
                    if msg[4] is not None:
                        success[first : first + len(shares[w])] = msg[4]
                        rule = True
                    pending.discard(w)
                else:  # the worker's exception, raised here
                    raise msg[2]
            for p in procs:
                p.join()
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                    p.join()
        return returns, lengths, success if rule else None, []


class _QueueBar:
    """Stands in for the tqdm bar inside a worker: reports each finished episode to the parent."""

    def __init__(self, messages, w: int):
        self.messages, self.w = messages, w

    def update(self, k: int) -> None:
        self.messages.put(("episode", self.w))


def _worker_main(messages, w, policy, spec, n, limit, env_kwargs, obs_map, seed, episodes, target) -> None:
    try:
        torch = sys.modules.get("torch")
        if torch is not None:
            # One thread per worker: the workers share the cores, and a forked OpenMP pool must stay unused.
            torch.set_num_threads(1)
        runner = Runner(spec, n, limit, "sync", None, env_kwargs, obs_map)
        try:
            returns, lengths, success, _ = runner.run(policy, episodes, seed, target, False, _QueueBar(messages, w))
        finally:
            runner.close()
        messages.put(("done", w, returns, lengths, success))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, which raises it
        try:
            pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an exception that cannot travel: send its text
            e = RuntimeError(f"evaluation worker {w}: {type(e).__name__}: {e}")
        messages.put(("error", w, e))
