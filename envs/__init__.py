"""``flowrl.envs``: environments and offline-RL data.

- :mod:`~flowrl.envs.specs`: env specs (D4RL names -> gymnasium ids, time limits, reference scores).
- :mod:`~flowrl.envs.dataset`: :class:`TrajectoryDataset`, flat arrays plus an episode index.
- :mod:`~flowrl.envs.loaders`: :func:`load_dataset` for paths, D4RL names, Minari ids, flowrl names.
- :mod:`~flowrl.envs.io_d4rl`, :mod:`~flowrl.envs.minari_io`: the on-disk formats (read and write).
- :mod:`~flowrl.envs.sampler`: context windows (right-padded), episode-anchored sequences and transitions,
  built by array indexing.
- :mod:`~flowrl.envs.evaluation`: the :class:`Policy` protocol and vectorized :func:`evaluate`
  (:mod:`~flowrl.envs.rollout_runner`, :mod:`~flowrl.envs.eval_workers`, success rates from
  :mod:`~flowrl.envs.success`); :mod:`~flowrl.envs.environment`: :func:`make_env`, :func:`check_compatible`.
- :mod:`~flowrl.envs.observations`: :class:`ObservationMap`, what the model sees of an observation (dict
  flattening, kept dimensions) and its gymnasium wrapper.
- :mod:`~flowrl.envs.robotics`: gymnasium-robotics (D4RL's mazes, Adroit, Kitchen), registered on demand.

Importing this package is cheap: gymnasium, minari and h5py are imported inside the functions that
need them.
"""

from .dataset import TrajectoryDataset
from .evaluation import (
    EvalResult,
    Policy,
    check_compatible,
    check_episode_limit,
    evaluate,
    evaluate_groups,
    make_env,
)
from .io_d4rl import write_d4rl_hdf5, write_npz
from .loaders import load_dataset, local_candidates
from .minari_io import minari_root, write_minari_dataset
from .observations import ObservationMap
from .sampler import ContextBatch, ContextSampler, EpisodeBatch, EpisodeSampler, TransitionBatch, TransitionSampler
from .specs import EnvSpec, get_spec, normalized_score

__all__ = [
    "EnvSpec",
    "ObservationMap",
    "get_spec",
    "normalized_score",
    "TrajectoryDataset",
    "load_dataset",
    "local_candidates",
    "ContextSampler",
    "ContextBatch",
    "EpisodeSampler",
    "EpisodeBatch",
    "TransitionSampler",
    "TransitionBatch",
    "Policy",
    "evaluate",
    "evaluate_groups",
    "EvalResult",
    "check_compatible",
    "check_episode_limit",
    "make_env",
    "write_minari_dataset",
    "write_d4rl_hdf5",
    "write_npz",
    "minari_root",
]
