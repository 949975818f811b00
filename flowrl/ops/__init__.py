"""Functional kernels. Each fast op has a slow twin beside it (:mod:`flowrl.ops.flow.naive`, re-exported by
:mod:`flowrl.ops.naive`)."""

from flowrl.ops.flow import FlowState, causal_linear_attention, flow_attention, state_updates_in_place

__all__ = ["FlowState", "causal_linear_attention", "flow_attention", "state_updates_in_place"]
