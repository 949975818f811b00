"""Vectorized evaluation rollouts: N gymnasium environments stepped together, one batched policy call
per step, per-episode returns and D4RL-normalized scores.

Episode ``i`` of an evaluation always starts from ``env.reset(seed=seed + i)``, whichever of the N
environments runs it, so results equal a plain one-environment loop over the same seeds (a test checks
this) and every target return is evaluated on the same initial states.

``workers=W`` splits the episodes across W forked processes, each with its share of the environments, a
copy of the policy and one torch thread: on a W-core machine the policy's arithmetic and the MuJoCo steps
of different workers run side by side (the GIL keeps threads from doing the same). Episode i still starts
from ``reset(seed=seed + i)``, so the returns equal a one-process run.

Why the N environments are stepped individually: ``SyncVectorEnv.step`` steps every sub-environment,
including ones that have finished their share of episodes and sit idle. Episode lengths differ a lot
(Hopper: 20 to 1000 steps), and on a CPU the environment step dominates, so stepping idle environments
can cost more than the batching saves. The default ``vectorization="sync"`` therefore holds the
environments in a gymnasium ``SyncVectorEnv`` (construction, spaces, close) with autoreset disabled and
steps only the active ones; ``"async"`` uses ``AsyncVectorEnv`` (one process per environment, all
stepped every step), which pays off when there are more cores than a 2-core laptop.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import pickle
import queue as queue_lib
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from flowrl import tiny
from flowrl.errors import InputError, MissingInputError

from .observations import ObservationMap, check_env_space, wrap_env
from .specs import EnvSpec, get_spec, normalized_score

if TYPE_CHECKING:
    from .dataset import TrajectoryDataset

__all__ = ["Policy", "EvalResult", "evaluate", "check_compatible", "make_env"]


@runtime_checkable
class Policy(Protocol):
    """What :func:`evaluate` drives. Agents implement it; ``flowrl.envs`` never imports agents.

    A policy serves N environments at once and keeps any per-environment state (e.g. a Decision
    Transformer's context) itself, indexed by environment.
    """

    def reset(self, env_mask: np.ndarray, target_return: float | None) -> None:
        """Start new episodes in the environments where ``env_mask`` (bool [N]) is True.

        The first call of an evaluation has every entry True and tells the policy N. ``target_return``
        is the (unscaled) return-to-go to condition on, or None for policies that do not use one.
        """
        ...

    def act(self, observations: np.ndarray, last_rewards: np.ndarray) -> np.ndarray:
        """Actions float [N, act_dim] for raw (unnormalized) ``observations`` float32 [N, obs_dim].

        ``last_rewards`` float32 [N] is each environment's reward from its previous step (0 right after
        a reset). Rows of environments that have finished all their episodes are still passed (with
        their last observation); their actions are ignored. Policies normalize states themselves.
        """
        ...


def policy_observation_map(policy: Policy) -> ObservationMap | None:
    """The observation map a policy was trained with (its ``observation_map`` attribute), if any.

    Agents' policies carry the map stored in their checkpoint, so :func:`evaluate` applies it to the live
    environments without being told."""
    obs_map = getattr(policy, "observation_map", None)
    if obs_map is not None and not isinstance(obs_map, ObservationMap):
        raise TypeError(f"policy.observation_map must be an ObservationMap or None, got {type(obs_map).__name__}")
    return obs_map


@dataclass
class EvalResult:
    """Episodes evaluated at one target return."""

    target_return: float | None
    returns: np.ndarray
    """float64 [episodes], undiscounted episode returns, in episode (= seed) order."""
    lengths: np.ndarray
    """int64 [episodes], steps per episode."""
    normalized: np.ndarray | None
    """float64 [episodes], D4RL-normalized returns (100 = expert), or None without reference scores."""
    seconds: float
    """Wall-clock time of this target's rollouts."""
    env: str = ""
    """Gymnasium id evaluated."""
    video: str | None = None
    """Path of the recorded episode, if any."""

    @property
    def mean(self) -> float:
        """Mean episode return."""
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        """Standard deviation (population) of episode returns."""
        return float(np.std(self.returns))

    @property
    def normalized_mean(self) -> float | None:
        return None if self.normalized is None else float(np.mean(self.normalized))

    @property
    def normalized_std(self) -> float | None:
        return None if self.normalized is None else float(np.std(self.normalized))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary and per-episode lists."""
        return {
            "env": self.env,
            "target_return": self.target_return,
            "episodes": int(self.returns.size),
            "return_mean": self.mean,
            "return_std": self.std,
            "normalized_mean": self.normalized_mean,
            "normalized_std": self.normalized_std,
            "length_mean": float(np.mean(self.lengths)),
            "seconds": self.seconds,
            "returns": self.returns.tolist(),
            "lengths": self.lengths.tolist(),
            "normalized": None if self.normalized is None else self.normalized.tolist(),
            "video": self.video,
        }


def make_env(
    env: str | EnvSpec,
    *,
    max_episode_steps: int | None = None,
    observation_map: ObservationMap | None = None,
    **kwargs: Any,
):
    """``gymnasium.make`` for an env name / D4RL name / gymnasium id / :class:`EnvSpec`, with the spec's
    time limit unless ``max_episode_steps`` is given. With ``observation_map`` (a dataset's or an agent's
    ``observation_map``), the environment's observations are mapped to what the model sees
    (:func:`flowrl.envs.observations.wrap_env`); without it they are left as the environment gives them."""
    spec = env if isinstance(env, EnvSpec) else get_spec(env)
    made = _make(spec.gym_id, max_episode_steps=max_episode_steps or spec.max_episode_steps, **kwargs)
    if observation_map is None:
        return made
    try:
        return wrap_env(made, observation_map)
    except BaseException:
        made.close()
        raise


def _make(gym_id: str, **kwargs: Any):
    import gymnasium

    return gymnasium.make(gym_id, **kwargs)


def _make_mapped(gym_id: str, obs_map: ObservationMap | None, **kwargs: Any):
    """A rollout environment: made, then wrapped by ``obs_map`` (dict observations without a map are
    refused, see :func:`~flowrl.envs.observations.check_env_space`). Module level, so vector envs can
    pickle it."""
    env = _make(gym_id, **kwargs)
    try:
        return wrap_env(env, obs_map)
    except BaseException:
        env.close()
        raise


def check_compatible(dataset: TrajectoryDataset, env: Any) -> None:
    """Raise ValueError unless the dataset's observation/action sizes match the environment's.

    ``env`` is a name / gymnasium id / :class:`EnvSpec` (made and closed here) or a gymnasium env. The
    dataset's observation map (dict layout, kept dimensions) must fit the environment's observations, and
    what it gives must have the dataset's observation size.
    """
    import gymnasium

    made = None
    if isinstance(env, (str, EnvSpec)):
        made = env = make_env(env)
    source = dataset.metadata.get("source") or "dataset"
    try:
        env_id = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
        try:
            obs_size = check_env_space(dataset.observation_map, env.observation_space, env_id)
        except ValueError as e:
            raise InputError(f"{source} does not fit {env_id}: {e}") from None
        act_size = gymnasium.spaces.flatdim(env.action_space)
    finally:
        if made is not None:
            made.close()
    problems = []
    if dataset.obs_dim != obs_size:
        problems.append(f"observations have size {dataset.obs_dim} but {env_id} expects {obs_size}")
    if dataset.act_dim != act_size:
        problems.append(f"actions have size {dataset.act_dim} but {env_id} expects {act_size}")
    if problems:
        raise InputError(f"{source} does not fit {env_id}: " + "; ".join(problems))


def evaluate(
    policy: Policy,
    env: str | EnvSpec,
    *,
    episodes: int = 10,
    num_envs: int = 10,
    seed: int = 0,
    target_returns: tuple[float | None, ...] | list[float | None] = (None,),
    video: str | os.PathLike | None = None,
    max_episode_steps: int | None = None,
    progress: bool = True,
    vectorization: Literal["sync", "async"] = "sync",
    ref_scores: tuple[float, float] | None = None,
    video_size: tuple[int, int] = (320, 240),
    env_kwargs: Mapping[str, Any] | None = None,
    workers: int = 1,
    observation_map: ObservationMap | None = None,
) -> list[EvalResult]:
    """Roll out ``policy`` for ``episodes`` episodes per target return, ``num_envs`` environments at once.

    Args:
        policy: see :class:`Policy`.
        env: env name, D4RL/Minari dataset name, gymnasium id or :class:`EnvSpec`.
        episodes: episodes per target return; episode i starts from ``reset(seed=seed + i)``.
        num_envs: environments stepped together (capped at ``episodes``).
        target_returns: one :class:`EvalResult` per entry (None: no conditioning).
        video: ``.gif`` or ``.mp4`` path: record episode 0 of the first target return (rendered
            headless; sets ``MUJOCO_GL=egl`` unless already set). Needs ``vectorization="sync"``;
            ``.mp4`` needs ``imageio-ffmpeg``.
        max_episode_steps: time limit (default: the spec's).
        progress: show a tqdm bar over episodes.
        vectorization: "sync" (default) or "async", see the module doc.
        ref_scores: (ref_min, ref_max) overriding the spec's D4RL reference scores.
        video_size: (width, height) of recorded MuJoCo frames.
        env_kwargs: extra keyword arguments for ``gymnasium.make`` (e.g. ``{"terminate_when_unhealthy":
            False}`` for MuJoCo locomotion).
        workers: processes to split the episodes across (see the module doc). Needs the "fork" start
            method (Linux, macOS), a CPU policy and ``vectorization="sync"``, and no video. Each worker
            runs ``ceil(num_envs / workers)`` environments with one torch thread.
        observation_map: how environment observations become the policy's input (flattened dicts, kept
            dimensions); default: the policy's own ``observation_map`` (agents' policies carry the one in
            their checkpoint), else none. Dict-observation environments need one.

    Returns:
        One :class:`EvalResult` per target return, in order.
    """
    # FLOWRL_TINY=1: two short episodes (flowrl.tiny)
    episodes, max_episode_steps = tiny.cap("episodes", episodes), tiny.cap("max_episode_steps", max_episode_steps)
    from tqdm.auto import tqdm

    spec = env if isinstance(env, EnvSpec) else get_spec(env)
    if episodes < 1 or num_envs < 1:
        raise InputError(f"episodes and num_envs must be >= 1, got {episodes} and {num_envs}")
    if vectorization not in ("sync", "async"):
        raise InputError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    targets = list(target_returns) or [None]
    video_path = _check_video(video, vectorization)
    workers = _check_workers(workers, episodes, vectorization, video_path)
    if video_path is not None:
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; read when the renderer is made
    n = min(num_envs, episodes)
    limit = max_episode_steps or spec.max_episode_steps
    obs_map = observation_map if observation_map is not None else policy_observation_map(policy)
    if workers > 1:
        runner = _Workers(spec.gym_id, n, limit, env_kwargs, workers, obs_map)
    else:
        runner = _Runner(spec.gym_id, n, limit, vectorization, video_size if video_path else None, env_kwargs, obs_map)
    results = []
    try:
        with tqdm(
            total=episodes * len(targets), desc=f"eval {spec.gym_id}", unit="ep", disable=not progress, leave=False
        ) as bar:
            for k, target in enumerate(targets):
                record = video_path is not None and k == 0
                t0 = time.perf_counter()
                returns, lengths, frames = runner.run(policy, episodes, seed, target, record, bar)
                seconds = time.perf_counter() - t0
                saved = None
                if record and frames:
                    _write_video(video_path, frames, fps=_fps(runner))
                    saved = str(video_path)
                results.append(
                    EvalResult(
                        target_return=None if target is None else float(target),
                        returns=returns,
                        lengths=lengths,
                        normalized=_normalize(spec, returns, ref_scores),
                        seconds=seconds,
                        env=spec.gym_id,
                        video=saved,
                    )
                )
    finally:
        runner.close()
    return results


class _Runner:
    """N environments with per-episode seeds; steps only the active ones in "sync" mode."""

    def __init__(
        self,
        gym_id: str,
        n: int,
        limit: int,
        mode: str,
        video_size: tuple[int, int] | None,
        env_kwargs: Mapping[str, Any] | None = None,
        obs_map: ObservationMap | None = None,
    ):
        import gymnasium
        from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

        kwargs: dict[str, Any] = {**dict(env_kwargs or {}), "max_episode_steps": limit}
        if video_size is not None:
            kwargs["render_mode"] = "rgb_array"
            if "mujoco" in str(gymnasium.spec(gym_id).entry_point):
                kwargs.update(width=video_size[0], height=video_size[1])
        make = functools.partial(_make_mapped, gym_id, obs_map, **kwargs)
        cls = SyncVectorEnv if mode == "sync" else AsyncVectorEnv
        # Autoreset off: we reset finished environments ourselves, each with its episode's seed.
        self.vec = cls([make] * n, autoreset_mode=AutoresetMode.DISABLED)
        self.mode = mode
        self.n = n
        self.act_shape = (n, *self.vec.single_action_space.shape)

    def close(self) -> None:
        self.vec.close()

    def _reset(self, mask: np.ndarray, seeds: list[int | None], obs: np.ndarray) -> None:
        if self.mode == "sync":
            for j in np.flatnonzero(mask):
                o, _ = self.vec.envs[j].reset(seed=seeds[j])
                obs[j] = o
        else:
            o, _ = self.vec.reset(seed=seeds, options={"reset_mask": mask})
            obs[mask] = o[mask]

    def _step(self, actions: np.ndarray, active: np.ndarray, obs: np.ndarray):
        """Step; returns rewards [n] and done [n] (0/False for inactive envs), updates ``obs`` in place."""
        rewards = np.zeros(self.n, dtype=np.float64)
        done = np.zeros(self.n, dtype=bool)
        if self.mode == "sync":
            for j in np.flatnonzero(active):
                o, r, term, trunc, _ = self.vec.envs[j].step(actions[j])
                obs[j] = o
                rewards[j] = r
                done[j] = term or trunc
        else:
            o, r, term, trunc, _ = self.vec.step(actions)
            obs[active] = o[active]
            rewards[active] = r[active]
            done[active] = (term | trunc)[active]
            # Idle environments are stepped too (AsyncVectorEnv steps all); ones that end must be reset
            # before the next step, with any seed since their episodes are not recorded.
            idle_done = ~active & (term | trunc)
            if idle_done.any():
                self.vec.reset(options={"reset_mask": idle_done})
        return rewards, done

    def run(self, policy: Policy, episodes: int, seed: int, target: float | None, record: bool, bar):
        n = self.n
        returns = np.zeros(episodes, dtype=np.float64)
        lengths = np.zeros(episodes, dtype=np.int64)
        episode_of_env = np.arange(n)
        next_episode = n
        obs = np.zeros((n, *self.vec.single_observation_space.shape), dtype=np.float64)
        all_envs = np.ones(n, dtype=bool)
        self._reset(all_envs, [seed + j for j in range(n)], obs)
        policy.reset(all_envs.copy(), target)
        active = all_envs.copy()
        ep_return = np.zeros(n, dtype=np.float64)
        ep_length = np.zeros(n, dtype=np.int64)
        last_rewards = np.zeros(n, dtype=np.float32)
        frames = [self.vec.envs[0].render()] if record else []
        recording = record

        while active.any():
            actions = np.asarray(policy.act(obs.astype(np.float32), last_rewards))
            if actions.shape != self.act_shape:
                raise ValueError(f"policy.act returned shape {actions.shape}, expected {self.act_shape}")
            rewards, done = self._step(actions, active, obs)
            ep_return[active] += rewards[active]
            ep_length[active] += 1
            last_rewards = rewards.astype(np.float32)
            if recording:
                frames.append(self.vec.envs[0].render())
                recording = not done[0]
            if not done.any():
                continue
            restart = np.zeros(n, dtype=bool)
            seeds: list[int | None] = [None] * n
            for j in np.flatnonzero(done):
                returns[episode_of_env[j]] = ep_return[j]
                lengths[episode_of_env[j]] = ep_length[j]
                bar.update(1)
                if next_episode < episodes:
                    episode_of_env[j] = next_episode
                    seeds[j] = seed + next_episode
                    restart[j] = True
                    next_episode += 1
                else:
                    active[j] = False
            if restart.any():
                self._reset(restart, seeds, obs)
                ep_return[restart] = 0.0
                ep_length[restart] = 0
                last_rewards[restart] = 0.0
                policy.reset(restart, target)
        return returns, lengths, frames


def _check_workers(workers: int, episodes: int, vectorization: str, video_path: Path | None) -> int:
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


class _Workers:
    """The episodes split across forked processes, each a :class:`_Runner` over its share (same interface)."""

    def __init__(
        self,
        gym_id: str,
        n: int,
        limit: int,
        env_kwargs: Mapping[str, Any] | None,
        workers: int,
        obs_map: ObservationMap | None = None,
    ):
        self.gym_id, self.n, self.limit, self.env_kwargs, self.workers = gym_id, n, limit, env_kwargs, workers
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
                    self.gym_id,
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
        return returns, lengths, []


class _QueueBar:
    """Stands in for the tqdm bar inside a worker: reports each finished episode to the parent."""

    def __init__(self, messages, w: int):
        self.messages, self.w = messages, w

    def update(self, k: int) -> None:
        self.messages.put(("episode", self.w))


def _worker_main(messages, w, policy, gym_id, n, limit, env_kwargs, obs_map, seed, episodes, target) -> None:
    try:
        torch = sys.modules.get("torch")
        if torch is not None:
            # One thread per worker: the workers share the cores, and a forked OpenMP pool must stay unused.
            torch.set_num_threads(1)
        runner = _Runner(gym_id, n, limit, "sync", None, env_kwargs, obs_map)
        try:
            returns, lengths, _ = runner.run(policy, episodes, seed, target, False, _QueueBar(messages, w))
        finally:
            runner.close()
        messages.put(("done", w, returns, lengths))
    except BaseException as e:  # noqa: BLE001 - everything goes back to the parent, which raises it
        try:
            pickle.dumps(e)
        except Exception:  # noqa: BLE001 - an exception that cannot travel: send its text
            e = RuntimeError(f"evaluation worker {w}: {type(e).__name__}: {e}")
        messages.put(("error", w, e))


def _normalize(spec: EnvSpec, returns: np.ndarray, ref_scores: tuple[float, float] | None) -> np.ndarray | None:
    if ref_scores is not None:
        return np.asarray(normalized_score(spec, returns, ref_min=ref_scores[0], ref_max=ref_scores[1]))
    if not spec.has_reference:
        return None
    return np.asarray(normalized_score(spec, returns))


def _check_video(video: str | os.PathLike | None, vectorization: str) -> Path | None:
    if video is None:
        return None
    path = Path(video)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise InputError(f"video must end in .gif or .mp4, got {path}")
    if vectorization != "sync":
        raise InputError("video recording needs vectorization='sync'")
    if suffix == ".mp4":
        try:
            import imageio_ffmpeg  # noqa: F401
        except ImportError:
            raise InputError(f"writing {path} needs imageio-ffmpeg (pip install imageio-ffmpeg); or use .gif") from None
    if not path.parent.is_dir():
        raise MissingInputError(f"folder {path.parent} for the video does not exist")
    return path


def _fps(runner: _Runner) -> int:
    env = runner.vec.envs[0] if runner.mode == "sync" else None
    fps = env.metadata.get("render_fps") if env is not None else None
    return int(fps or 30)


def _write_video(path: Path, frames: list[np.ndarray], fps: int) -> None:
    import imageio.v2 as imageio

    tmp = path.with_name(f".{path.name}.part{path.suffix}")
    try:
        if path.suffix.lower() == ".gif":
            imageio.mimsave(tmp, frames, duration=1000.0 / fps, loop=0)
        else:
            imageio.mimsave(tmp, frames, fps=fps)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
