"""Agents: the Decision Transformer with Flow-Attention (and its softmax twin), BC, training, rollouts.

Typical use::

    from flowrl.envs import load_dataset
    from flowrl.agents import DecisionTransformerConfig, TrainConfig, make_agent, fit, load_agent

    ds = load_dataset("hopper-medium")
    agent = make_agent(DecisionTransformerConfig(), ds.obs_dim, ds.act_dim, seed=0)
    fit(agent, ds, TrainConfig(steps=3000), run_dir="runs/hopper")
    agent = load_agent("runs/hopper")          # the latest checkpoint
    policy = agent.make_policy()               # a flowrl.envs.Policy for evaluate(...)
"""

from flowrl.agents.agent import Agent, BCAgent, DTAgent, load_agent, make_agent
from flowrl.agents.config import PRESETS, BCConfig, DecisionTransformerConfig, config_from_dict, preset
from flowrl.agents.policy import BCPolicy, DTPolicy
from flowrl.agents.trainer import TrainConfig, Trainer, fit, pick_device

__all__ = [
    "Agent",
    "BCAgent",
    "BCConfig",
    "BCPolicy",
    "DTAgent",
    "DTPolicy",
    "DecisionTransformerConfig",
    "PRESETS",
    "TrainConfig",
    "Trainer",
    "config_from_dict",
    "fit",
    "load_agent",
    "make_agent",
    "pick_device",
    "preset",
]
