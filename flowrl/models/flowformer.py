"""The Flowformer trunk: a stack of pre-norm blocks, ``[B, L, dim] -> [B, L, dim]``."""

from __future__ import annotations

from torch import Tensor, nn

from flowrl.layers.attention import select_positions
from flowrl.layers.block import Block
from flowrl.models.config import FlowformerConfig

__all__ = ["Flowformer"]


class Flowformer(nn.Module):
    """Task-agnostic trunk. Domain models add their own embeddings and heads around it.

    Causal trunks carry a per-layer state for incremental inference: ``forward(x, state=s,
    return_state=True)`` continues the sequence that produced ``s`` (a list with one state per block;
    Flow-Attention states have constant size, softmax states are KV caches).
    """

    def __init__(self, config: FlowformerConfig):
        super().__init__()
        self.config = config
        c = config
        self.blocks = nn.ModuleList(
            Block(
                c.dim,
                c.heads,
                attention=c.attention,
                causal=c.causal,
                dropout=c.dropout,
                mlp_ratio=c.mlp_ratio,
                activation=c.activation,
                clamp=c.clamp,
                eps=c.eps,
                chunk=c.chunk,
                norm_eps=c.norm_eps,
            )
            for _ in range(c.depth)
        )
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps) if c.final_norm else nn.Identity()

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        state: list | None = None,
        return_state: bool = False,
        select: slice | Tensor | None = None,
    ):
        """x [B, L, dim]; padding_mask [B, L] bool (True = pad, non-causal only).

        ``select`` (a slice or 1-d index tensor over L): return only these positions, ``[B, L', dim]``.
        Equal to ``forward(x)[:, select]``, but the last block's output projection and MLP (and the final
        norm) run on the selected positions only -- a Decision Transformer reads one token in three.
        """
        if x.dim() != 3 or x.shape[-1] != self.config.dim:
            raise ValueError(f"Flowformer: x has shape {tuple(x.shape)}, expected [B, L, {self.config.dim}]")
        if padding_mask is not None and (return_state or self.config.causal):
            raise ValueError("Flowformer: padding_mask is for non-causal trunks; pad causal inputs on the right")
        if state is not None and len(state) != len(self.blocks):
            raise ValueError(f"Flowformer: state has {len(state)} layers, expected {len(self.blocks)}")
        new_states = []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            layer_state = None if state is None else state[i]
            keep = select if i == last else None
            if return_state:
                x, s = block(x, state=layer_state, return_state=True, select=keep)
                new_states.append(s)
            else:
                x = block(x, padding_mask=padding_mask, state=layer_state, select=keep)
        if not self.blocks:
            x = select_positions(x, select)
        x = self.norm(x)
        return (x, new_states) if return_state else x
