"""Build D4RL-style datasets with Stable-Baselines3 behaviour policies (the library behind ``flowrl collect``).

- :mod:`~flowrl.envs.collect.training`: :func:`train_behavior` trains SAC (or TD3) with checkpoints, a run lock
  and resume (:class:`BehaviorTrainingConfig`).
- :mod:`~flowrl.envs.collect.recording`: :func:`record` rolls a policy out in a batch of env copies;
  :func:`buffer_transitions` reads a run's replay buffer (medium-replay).
- :mod:`~flowrl.envs.collect.levels`: the levels and which checkpoint becomes ``medium`` and ``expert``.
- :mod:`~flowrl.envs.collect.writers`: dataset ids and the atomic Minari write.
- :mod:`~flowrl.envs.collect.pipeline`: :func:`collect` (train, then record every requested level) and
  :func:`collect_from_policy` (one level from an existing SB3 ``.zip`` or flowrl ``.pt``).
- :mod:`~flowrl.envs.collect.default_dataset`: :func:`ensure_default_dataset`, the built-in ``hopper-medium``
  generated from the shipped policy without SB3, and :func:`export_behavior_policy`, which made that policy.

Importing this package is cheap: gymnasium, SB3 and torch are imported inside the functions that need them.
"""

from flowrl.envs.collect.default_dataset import DEFAULT_DATASETS, ensure_default_dataset, export_behavior_policy
from flowrl.envs.collect.levels import (
    DEFAULT_TRANSITIONS,
    LEVELS,
    POLICY_LEVELS,
    parse_levels,
    select_expert,
    select_medium,
)
from flowrl.envs.collect.pipeline import CollectConfig, collect, collect_from_policy, default_run_dir
from flowrl.envs.collect.recording import buffer_transitions, measure_returns, record
from flowrl.envs.collect.training import (
    ALGORITHMS,
    BehaviorTrainingConfig,
    evaluate_model,
    load_buffer,
    load_model,
    load_run,
    train_behavior,
)
from flowrl.envs.collect.writers import dataset_id

__all__ = [
    "ALGORITHMS",
    "LEVELS",
    "POLICY_LEVELS",
    "DEFAULT_TRANSITIONS",
    "DEFAULT_DATASETS",
    "BehaviorTrainingConfig",
    "CollectConfig",
    "train_behavior",
    "load_run",
    "load_buffer",
    "load_model",
    "evaluate_model",
    "record",
    "measure_returns",
    "buffer_transitions",
    "parse_levels",
    "select_medium",
    "select_expert",
    "dataset_id",
    "collect",
    "collect_from_policy",
    "default_run_dir",
    "ensure_default_dataset",
    "export_behavior_policy",
]
