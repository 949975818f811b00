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

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from numpy.typing import ArrayLike

from flowrl import atomic, tiny
from flowrl.errors import InputError, MissingInputError

from .environment import check_compatible, check_env_id, make_env
from .eval_workers import Workers, check_workers
from .observations import ObservationMap
from .rollout_runner import Runner
from .specs import EnvSpec, get_spec, normalized_score

__all__ = [
    "Policy",
    "EvalResult",
    "evaluate",
    "evaluate_groups",
    "check_compatible",
    "check_episode_limit",
    "make_env",
    "policy_observation_map",
]


@runtime_checkable
class Policy(Protocol):
    """What :func:`evaluate` drives. Agents implement it; ``flowrl.envs`` never imports agents.

    A policy serves N environments at once and keeps any per-environment state (e.g. a Decision
    Transformer's context) itself, indexed by environment. A policy that can only act in episodes up to
    some length says so in an attribute ``max_episode_steps`` (int; absent or None: no limit).
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
    success: np.ndarray | None = None
    """bool [episodes], whether each episode succeeded by its spec's rule (:mod:`flowrl.envs.success`), or
    None where the environment reports no success."""

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

    @property
    def success_rate(self) -> float | None:
        """Fraction of episodes that succeeded (0..1), or None without a success rule."""
        return None if self.success is None else float(np.mean(self.success))

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
            "success_rate": self.success_rate,
            "success": None if self.success is None else self.success.tolist(),
            "video": self.video,
        }


def check_episode_limit(policy: Policy, env: str | EnvSpec, max_episode_steps: int | None = None) -> None:
    """Raise InputError if ``env``'s time limit (or ``max_episode_steps``) is longer than the episodes
    ``policy`` can act in (its ``max_episode_steps`` attribute, e.g. a model's timestep table)."""
    spec = env if isinstance(env, EnvSpec) else get_spec(env)
    limit, cap = max_episode_steps or spec.max_episode_steps, getattr(policy, "max_episode_steps", None)
    if cap is not None and limit > cap:
        raise InputError(
            f"episodes of up to {limit} steps ({spec.gym_id}'s time limit) are longer than the policy can act in: "
            f"{cap} steps (its model's timestep table, max_timestep={cap}); cap episodes at max_episode_steps={cap} "
            f"or train with max_timestep >= {limit}"
        )


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
        env_kwargs: keyword arguments for ``gymnasium.make`` over the spec's evaluation settings
            (:meth:`EnvSpec.make_kwargs`: a maze's fixed goal, Kitchen's tasks), e.g.
            ``{"terminate_when_unhealthy": False}`` for MuJoCo locomotion.
        workers: processes to split the episodes across (see the module doc). Needs the "fork" start
            method (Linux, macOS), a CPU policy and ``vectorization="sync"``, and no video. Each worker
            runs ``ceil(num_envs / workers)`` environments with one torch thread.
        observation_map: how environment observations become the policy's input (flattened dicts, kept
            dimensions); default: the policy's own ``observation_map`` (agents' policies carry the one in
            their checkpoint), else none. Dict-observation environments need one.

    Returns:
        One :class:`EvalResult` per target return, in order, with each episode's success where the spec
        has a success rule (mazes, Adroit, Kitchen).
    """
    return _evaluate(
        policy,
        env,
        groups=1,
        episodes=episodes,
        num_envs=num_envs,
        seed=seed,
        target_returns=target_returns,
        video=video,
        max_episode_steps=max_episode_steps,
        progress=progress,
        vectorization=vectorization,
        ref_scores=ref_scores,
        video_size=video_size,
        env_kwargs=env_kwargs,
        workers=workers,
        observation_map=observation_map,
    )[0]


def evaluate_groups(
    policy: Policy,
    env: str | EnvSpec,
    groups: int,
    *,
    episodes: int = 10,
    num_envs: int = 10,
    seed: int = 0,
    target_returns: tuple[float | None, ...] | list[float | None] = (None,),
    max_episode_steps: int | None = None,
    progress: bool = True,
    ref_scores: tuple[float, float] | None = None,
    env_kwargs: Mapping[str, Any] | None = None,
    observation_map: ObservationMap | None = None,
) -> list[list[EvalResult]]:
    """:func:`evaluate` for a policy that acts for ``groups`` agents at once (e.g. the seeds of a seed-batched
    model): ``groups × n`` environments, ``n = min(num_envs, episodes)``, where environments ``g·n .. g·n+n-1``
    belong to group g. Every group plays the same episodes (episode i from ``reset(seed=seed + i)``), so
    group g's results equal those of its agent evaluated alone. One ``policy.act`` call per step covers all
    groups. Returns ``[group][target]`` :class:`EvalResult` lists; the arguments are :func:`evaluate`'s.
    """
    if not isinstance(groups, int) or groups < 1:
        raise InputError(f"groups must be an integer >= 1, got {groups!r}")
    return _evaluate(
        policy,
        env,
        groups=groups,
        episodes=episodes,
        num_envs=num_envs,
        seed=seed,
        target_returns=target_returns,
        video=None,
        max_episode_steps=max_episode_steps,
        progress=progress,
        vectorization="sync",
        ref_scores=ref_scores,
        video_size=(320, 240),
        env_kwargs=env_kwargs,
        workers=1,
        observation_map=observation_map,
    )


def _evaluate(
    policy: Policy,
    env: str | EnvSpec,
    *,
    groups: int,
    episodes: int,
    num_envs: int,
    seed: int,
    target_returns,
    video,
    max_episode_steps: int | None,
    progress: bool,
    vectorization: str,
    ref_scores: tuple[float, float] | None,
    video_size: tuple[int, int],
    env_kwargs: Mapping[str, Any] | None,
    workers: int,
    observation_map: ObservationMap | None,
) -> list[list[EvalResult]]:
    # FLOWRL_TINY=1: two short episodes (flowrl.tiny)
    episodes, max_episode_steps = tiny.cap("episodes", episodes), tiny.cap("max_episode_steps", max_episode_steps)
    from tqdm.auto import tqdm

    spec = env if isinstance(env, EnvSpec) else get_spec(env)
    if episodes < 1 or num_envs < 1:
        raise InputError(f"episodes and num_envs must be >= 1, got {episodes} and {num_envs}")
    if vectorization not in ("sync", "async"):
        raise InputError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
    targets = list(target_returns) or [None]
    bad = [r for r in targets if r is not None and not np.isfinite(r)]
    if bad:
        raise InputError(f"target returns must be finite numbers, got {bad}")
    video_path = _check_video(video, vectorization)
    workers = check_workers(workers, episodes, vectorization, video_path)
    check_episode_limit(policy, spec, max_episode_steps)
    if video_path is not None:
        os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; read when the renderer is made
    n = min(num_envs, episodes)
    limit = max_episode_steps or spec.max_episode_steps
    obs_map = observation_map if observation_map is not None else policy_observation_map(policy)
    kwargs = {**spec.make_kwargs(), **dict(env_kwargs or {})}
    check_env_id(spec.gym_id)  # an unknown id fails here, in one line, not inside a worker
    runner: Runner | Workers
    if workers > 1:
        runner = Workers(spec, n, limit, kwargs, workers, obs_map)
    else:
        size = video_size if video_path else None
        runner = Runner(spec, n * groups, limit, vectorization, size, kwargs, obs_map)
    results: list[list[EvalResult]] = [[] for _ in range(groups)]
    try:
        with tqdm(
            total=groups * episodes * len(targets),
            desc=f"eval {spec.gym_id}",
            unit="ep",
            disable=not progress,
            leave=False,
        ) as bar:
            for k, target in enumerate(targets):
                record = video_path is not None and k == 0
                t0 = time.perf_counter()
                if isinstance(runner, Runner):
                    returns, lengths, success, frames = runner.run_groups(
                        policy, episodes, seed, target, record, bar, groups
                    )
                else:  # workers serve one group
                    returns, lengths, success, frames = runner.run(policy, episodes, seed, target, record, bar)
                    returns, lengths = returns[None], lengths[None]
                    success = None if success is None else success[None]
                seconds = time.perf_counter() - t0
                saved = None
                if record and frames:
                    # a recording has a video path, and check_workers keeps it to one process (a Runner)
                    assert video_path is not None and isinstance(runner, Runner)
                    _write_video(video_path, frames, fps=_fps(runner))
                    saved = str(video_path)
                for g in range(groups):
                    results[g].append(
                        EvalResult(
                            target_return=None if target is None else float(target),
                            returns=returns[g],
                            lengths=lengths[g],
                            normalized=_normalize(spec, returns[g], ref_scores),
                            seconds=seconds,
                            env=spec.gym_id,
                            video=saved if g == 0 else None,
                            success=None if success is None else success[g],
                        )
                    )
    finally:
        runner.close()
    return results


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


def _fps(runner: Runner) -> int:
    env = runner.envs[0] if runner.envs else None
    fps = env.metadata.get("render_fps") if env is not None else None
    return int(fps or 30)


def _write_video(path: Path, frames: list[ArrayLike], fps: int) -> None:
    import imageio.v2 as imageio

    with atomic.atomic_path(path, suffix=path.suffix) as tmp:  # imageio picks the format by extension
        if path.suffix.lower() == ".gif":
            imageio.mimsave(tmp, frames, duration=1000.0 / fps, loop=0)
        else:
            imageio.mimsave(tmp, frames, fps=fps)
