"""A continuous-control T-maze: a cue at the episode start decides which arm pays, hundreds of steps later.

``flowrl/TMaze-v0`` (registered with gymnasium when this module is imported; flowrl's env name ``tmaze``)::

                          +---+  goal  (y = +arm)
                          |   |
    start  x=0 ---------- + J +        corridor: x in [0, length], |y| <= 0.5 (walls clip the position)
                          |   |
                          +---+  goal  (y = -arm)

The agent moves a point: ``action`` in [-1, 1]² is a velocity, the position moves by ``speed · action`` per
step. Observation ``[x / length, y / arm, cue]``: the cue is +1 or -1 (which arm pays, drawn at reset) for
the first ``cue_steps`` steps and 0 afterwards. Reaching the end of an arm (|y| >= arm - 0.25 inside the
junction) ends the episode with reward 1 at the cued arm, 0 at the other. The corridor takes at least
``(length - 0.5) / speed`` = 230 steps, so a policy that sees only its last K steps has not seen the cue when
it reaches the junction unless K > 180: a K=20 policy can only guess (half its episodes succeed), one with
memory of the whole episode can succeed in all of them.

:func:`scripted_actions` is the behaviour policy of the offline data (``flowrl collect tmaze``): down the
corridor with noise that does not depend on the cue, then into an arm drawn independently of the cue (the
cued one with probability ``p_correct``), so half the episodes succeed and a return-conditioned agent must
recall the cue to pick the arm that pays.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from flowrl.errors import InputError, OutputExistsError

__all__ = ["TMazeEnv", "GYM_ID", "scripted_actions", "collect_tmaze", "record_tmaze"]

GYM_ID = "flowrl/TMaze-v0"
MAX_STEPS = 500
NOISE = 0.05
"""Standard deviation of the behaviour policy's action noise. The arm is decided in the one step at the junction
(after it the position shows it): the smaller the noise on the other steps, the larger that step's share of
the loss a model learns from."""


class TMazeEnv(gym.Env):
    """The T-maze (see the module docstring). All lengths in maze units."""

    metadata = {"render_modes": []}

    def __init__(self, length: float = 12.0, arm: float = 2.0, speed: float = 0.05, cue_steps: int = 50):
        if length <= 0 or arm <= 0.5 or speed <= 0 or cue_steps < 1:
            raise ValueError(f"TMazeEnv: bad geometry length={length}, arm={arm}, speed={speed}, cue_steps={cue_steps}")
        self.length, self.arm, self.speed, self.cue_steps = float(length), float(arm), float(speed), int(cue_steps)
        top = (self.length + 0.5) / self.length
        self.observation_space = gym.spaces.Box(np.array([0, -1, -1], np.float32), np.array([top, 1, 1], np.float32))
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.pos = np.zeros(2)
        self.cue, self.t = 1.0, 0

    def _obs(self) -> np.ndarray:
        cue = self.cue if self.t < self.cue_steps else 0.0
        return np.array([self.pos[0] / self.length, self.pos[1] / self.arm, cue], np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pos = np.zeros(2)
        self.cue = float(self.np_random.choice([-1.0, 1.0]))
        self.t = 0
        return self._obs(), {"cue": self.cue}

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        L = self.length
        x, y = self.pos + self.speed * a
        # walls: the corridor |y| <= 0.5 for x < L - 0.5, the junction column [L - 0.5, L + 0.5] with |y| <= arm
        x, y = float(np.clip(x, 0.0, L + 0.5)), float(np.clip(y, -self.arm, self.arm))
        if x < L - 0.5 and abs(y) > 0.5:
            if abs(self.pos[1]) > 0.5:  # from an arm: the column's wall stops x
                x = L - 0.5
            else:  # in the corridor: its walls stop y
                y = float(np.clip(y, -0.5, 0.5))
        self.pos = np.array([x, y])
        self.t += 1
        reward, terminated = 0.0, False
        if x >= L - 0.5 and abs(y) >= self.arm - 0.25:
            terminated = True
            reward = 1.0 if np.sign(y) == self.cue else 0.0
        return self._obs(), reward, terminated, False, {"cue": self.cue}


def scripted_actions(
    obs: np.ndarray, arm_sign: np.ndarray, rng: np.random.Generator, length: float = 12.0, noise: float = NOISE
):
    """Behaviour actions [N, 2] for observations [N, 3]: down the corridor, then into the arm ``arm_sign`` [N]
    (±1, chosen per episode). Gaussian noise of std ``noise`` on both axes, independent of the cue."""
    n = len(obs)
    x = obs[:, 0] * length
    at_junction = x >= length - 0.3
    eps = rng.normal(0.0, noise, size=(n, 2))
    ax = np.where(at_junction, (length - x) * 2.0, 0.8) + eps[:, 0]
    ay = np.where(at_junction, 0.8 * arm_sign, -obs[:, 1] * 2.0) + eps[:, 1]
    return np.clip(np.stack([ax, ay], 1), -1.0, 1.0).astype(np.float32)


def collect_tmaze(
    transitions: int, *, seed: int = 0, p_correct: float = 0.5, noise: float = NOISE, progress: bool = True
) -> dict:
    """Roll out :func:`scripted_actions` for whole episodes until at least ``transitions`` steps are recorded
    (episode i from ``reset(seed=seed + i)``); returns D4RL-layout arrays (observations, actions, rewards,
    terminals, timeouts, next_observations)."""
    from tqdm.auto import tqdm

    if transitions < 1 or not 0.0 <= p_correct <= 1.0 or not 0.0 <= noise < 1.0:
        raise InputError(
            "collect_tmaze: transitions must be >= 1, p_correct in [0, 1] and noise in [0, 1), "
            f"got {transitions}, {p_correct}, {noise}"
        )
    rng = np.random.default_rng(seed)
    env = gym.make(GYM_ID)
    maze = env.unwrapped
    assert isinstance(maze, TMazeEnv)
    keys = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")
    parts: dict[str, list] = {k: [] for k in keys}
    with tqdm(total=transitions, desc="collect tmaze", unit="step", disable=not progress) as bar:
        i = 0
        while len(parts["rewards"]) < transitions:
            obs, info = env.reset(seed=seed + i)
            arm = info["cue"] if rng.random() < p_correct else -info["cue"]
            done = False
            while not done:
                a = scripted_actions(obs[None], np.array([arm]), rng, maze.length, noise)[0]
                nxt, r, term, trunc, _ = env.step(a)
                for k, v in zip(keys, (obs, a, r, term, trunc, nxt)):
                    parts[k].append(v)
                obs, done = nxt, term or trunc
                bar.update(1)
            i += 1
    env.close()
    out = {k: np.asarray(v) for k, v in parts.items()}
    for k in ("observations", "next_observations", "rewards"):
        out[k] = out[k].astype(np.float32)
    return out


def record_tmaze(
    transitions: int,
    *,
    seed: int = 0,
    p_correct: float = 0.5,
    noise: float = NOISE,
    dataset: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> dict[str, Any]:
    """``flowrl collect tmaze``: record :func:`collect_tmaze` as the Minari dataset ``dataset`` (default
    ``flowrl/tmaze/mixed-v0``, loadable as ``tmaze-mixed``). Reference scores 0 and 1, so the normalized
    score is the success rate in percent. Returns a summary row (dataset id, transitions, episodes, mean return)."""
    from flowrl.envs.minari_io import resolve_minari_id, write_minari_dataset

    dataset = dataset or "flowrl/tmaze/mixed-v0"
    if not overwrite and resolve_minari_id(dataset) is not None:  # before minutes of recording, not after
        raise OutputExistsError(f"dataset {dataset} exists; pass --overwrite to replace it")
    arrays = collect_tmaze(transitions, seed=seed, p_correct=p_correct, noise=noise, progress=progress)
    returns = arrays["rewards"][arrays["terminals"]]  # 1 per success; a timeout ends at 0
    episodes = int(arrays["terminals"].sum() + arrays["timeouts"].sum())
    meta = {
        "ref_min_score": 0.0,
        "ref_max_score": 1.0,
        "policy": f"scripted T-maze behaviour, cued arm with probability {p_correct}, action noise std {noise}",
        "seed": seed,
        "command": command,
        "env_name": "tmaze",
    }
    write_minari_dataset(
        dataset,
        *(arrays[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts")),
        env_id=GYM_ID,
        metadata=meta,
        next_observations=arrays["next_observations"],
        overwrite=overwrite,
    )
    return {
        "dataset_id": dataset,
        "transitions": int(len(arrays["rewards"])),
        "episodes": episodes,
        "mean_return": float(returns.sum()) / max(episodes, 1),
    }


if GYM_ID not in gym.registry:
    gym.register(GYM_ID, entry_point="flowrl.envs.tmaze:TMazeEnv", max_episode_steps=MAX_STEPS)
