"""Functional kernels. Each fast op has a slow twin in :mod:`flowrl.ops.naive`."""

from flowrl.ops.flow_attention import FlowState, causal_linear_attention, flow_attention, state_updates_in_place

__all__ = ["FlowState", "causal_linear_attention", "flow_attention", "state_updates_in_place"]
