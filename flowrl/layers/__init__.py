"""Attention modules, the transformer block and position embeddings."""

from flowrl.layers.attention import FlowAttention, KVCache, SoftmaxAttention
from flowrl.layers.block import MLP, Block
from flowrl.layers.dropout import Dropout
from flowrl.layers.embeddings import LearnedPositionEmbedding, SinusoidalPositionEmbedding

__all__ = [
    "Block",
    "Dropout",
    "FlowAttention",
    "KVCache",
    "LearnedPositionEmbedding",
    "MLP",
    "SinusoidalPositionEmbedding",
    "SoftmaxAttention",
]
