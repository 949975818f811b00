"""flowrl: Flow-Attention (Flowformer) backbone and offline reinforcement learning.

The backbone (``flowrl.ops``, ``flowrl.layers``, ``flowrl.models``) needs only torch and numpy;
the RL stack (``flowrl.envs``, ``flowrl.agents``, ``flowrl.scripts``) comes with the ``rl`` extra.
"""

from flowrl.layers import FlowAttention, SoftmaxAttention
from flowrl.models import Flowformer, FlowformerConfig
from flowrl.ops import FlowState, flow_attention

__version__ = "0.1.0"

__all__ = ["FlowAttention", "FlowState", "Flowformer", "FlowformerConfig", "SoftmaxAttention", "flow_attention"]
