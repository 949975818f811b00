"""Slow, obviously-correct references for the ops in :mod:`flowrl.ops` (each op's twin lives beside it)."""

from flowrl.ops.flow.naive import flow_attention_causal_materialized, flow_attention_naive

__all__ = ["flow_attention_naive", "flow_attention_causal_materialized"]
