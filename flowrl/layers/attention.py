"""Multi-head attention modules: Flow-Attention and the softmax baseline, with one signature.

Both map ``x [B, L, dim] -> [B, L, dim]``; projections are named like the Flowformer reference module
(``query_projection``, ``key_projection``, ``value_projection``, ``out_projection``), so a reference
state dict loads one-to-one. Causal modules carry a state for incremental decoding: a
:class:`~flowrl.ops.FlowState` (constant size) for flow, a :class:`KVCache` (grows with L) for softmax.
"""

from __future__ import annotations

from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowrl.layers.dropout import Dropout
from flowrl.ops import FlowState, flow_attention

__all__ = ["FlowAttention", "SoftmaxAttention", "KVCache"]


def select_positions(x: Tensor, select: slice | Tensor | None, dim: int = 1) -> Tensor:
    """Positions ``select`` (a slice or a 1-d index tensor; None: all) of x along ``dim``."""
    if select is None:
        return x
    if isinstance(select, slice):
        return x[(slice(None),) * dim + (select,)]
    return x.index_select(dim, select)


class KVCache(NamedTuple):
    """Keys and values of the tokens seen so far, [B, H, T, D] and [B, H, T, M]."""

    k: Tensor
    v: Tensor


class _MultiHead(nn.Module):
    def __init__(self, dim: int, heads: int, *, causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{type(self).__name__}: dim={dim} is not divisible by heads={heads}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1), got {dropout}")
        self.dim, self.heads, self.causal = dim, heads, causal
        self.query_projection = nn.Linear(dim, dim, bias=bias)
        self.key_projection = nn.Linear(dim, dim, bias=bias)
        self.value_projection = nn.Linear(dim, dim, bias=bias)
        self.out_projection = nn.Linear(dim, dim, bias=bias)
        self.dropout = Dropout(dropout)

    def _split(self, x: Tensor, proj: nn.Linear) -> Tensor:
        B, L, _ = x.shape
        return proj(x).view(B, L, self.heads, -1).transpose(1, 2)  # (B, H, L, dim/H)

    def _merge(self, y: Tensor, select: slice | Tensor | None = None) -> Tensor:
        y = select_positions(y, select, 2)  # drop unwanted query positions before the output projection
        B, H, L, Dh = y.shape
        return self.dropout(self.out_projection(y.transpose(1, 2).reshape(B, L, H * Dh)))

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        padding_mask: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        state: FlowState | KVCache | None = None,
        return_state: bool = False,
        select: slice | Tensor | None = None,
    ):
        """x [B, L, dim]; context [B, S, dim] for cross-attention (default: x). Masks are bool, True = pad.

        ``state`` (causal only) continues earlier calls: a :class:`~flowrl.ops.FlowState` for flow, a
        :class:`KVCache` for softmax; ``return_state`` also returns the state after the last token.
        ``select`` (slice or 1-d index tensor over L) returns only those query positions (see ``Block``).
        """
        q, k, v, kpm = self._project(x, context, padding_mask, context_padding_mask, state)
        y, new_state = self._attend(q, k, v, kpm, padding_mask, state, return_state)
        y = self._merge(y, select)
        return (y, new_state) if return_state else y

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, kpm, padding_mask, state, return_state: bool):
        """(y [B, H, L, dim/H], the new state or None) from the projected q, k, v and the key padding mask."""
        raise NotImplementedError

    def _project(self, x: Tensor, context: Tensor | None, padding_mask, context_padding_mask, state):
        """Validate, then q from x and k, v from the context (x itself for self-attention), all (B, H, ·, dim/H).

        Returns (q, k, v, key padding mask).
        """
        self._check(x, context, padding_mask, state)
        if context is None:  # self-attention: one product for q, k and v (x is read, and cast, once)
            projs = (self.query_projection, self.key_projection, self.value_projection)
            weight = torch.cat([p.weight for p in projs])
            bias = None if projs[0].bias is None else torch.cat([p.bias for p in projs])
            B, L, _ = x.shape
            qkv = F.linear(x, weight, bias).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)  # each (B, H, L, dim/H)
            return q, k, v, padding_mask
        q = self._split(x, self.query_projection)
        k = self._split(context, self.key_projection)
        v = self._split(context, self.value_projection)
        return q, k, v, context_padding_mask

    def _check(self, x: Tensor, context: Tensor | None, padding_mask: Tensor | None, state) -> None:
        name = type(self).__name__
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{name}: x has shape {tuple(x.shape)}, expected [B, L, {self.dim}]")
        if context is not None:
            if self.causal:
                raise ValueError(f"{name}: cross-attention (context) needs causal=False")
            if context.dim() != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.dim:
                raise ValueError(
                    f"{name}: context has shape {tuple(context.shape)}, expected [{x.shape[0]}, S, {self.dim}]"
                )
        if padding_mask is not None and self.causal:
            raise ValueError(f"{name}: padding_mask is for causal=False; pad causal inputs on the right")
        if state is not None and not self.causal:
            raise ValueError(f"{name}: state needs causal=True")


class FlowAttention(_MultiHead):
    """Multi-head Flow-Attention (Flowformer). ``clamp`` bounds the conserved source flow.

    Example::

        attn = FlowAttention(64, heads=4, causal=True)
        y, state = attn(x[:, :10], return_state=True)
        y_next, state = attn(x[:, 10:11], state=state, return_state=True)  # O(1) in the prefix length
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        causal: bool = False,
        dropout: float = 0.0,
        clamp: float = 1.0,
        eps: float = 1e-6,
        chunk: int = 64,
        bias: bool = True,
    ):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)
        self.clamp, self.eps, self.chunk = clamp, eps, chunk

    def _attend(self, q, k, v, kpm, padding_mask, state: FlowState | None, return_state: bool):
        if self.causal:
            out = flow_attention(
                q,
                k,
                v,
                causal=True,
                eps=self.eps,
                clamp=self.clamp,
                state=state,
                return_state=return_state,
                chunk=self.chunk,
            )
            y, new_state = cast("tuple[Tensor, FlowState | None]", out if return_state else (out, None))
        else:
            y = cast(
                Tensor,
                flow_attention(
                    q, k, v, eps=self.eps, clamp=self.clamp, key_padding_mask=kpm, query_padding_mask=padding_mask
                ),
            )
            new_state = None
        return y, new_state


class SoftmaxAttention(_MultiHead):
    """Multi-head softmax attention on ``scaled_dot_product_attention``: the baseline, same signature."""

    def __init__(self, dim: int, heads: int, *, causal: bool = False, dropout: float = 0.0, bias: bool = True):
        super().__init__(dim, heads, causal=causal, dropout=dropout, bias=bias)

    def _attend(self, q, k, v, kpm, padding_mask, state: KVCache | None, return_state: bool):
        new_state = None
        if self.causal:
            if state is not None:
                if state.k.shape[0] != q.shape[0] or state.k.shape[1] != self.heads:
                    raise ValueError(
                        f"SoftmaxAttention: state has shape {tuple(state.k.shape)}, expected "
                        f"[{q.shape[0]}, {self.heads}, T, {self.dim // self.heads}]"
                    )
                k = torch.cat([state.k.to(k.dtype), k], dim=2)
                v = torch.cat([state.v.to(v.dtype), v], dim=2)
            if return_state:
                new_state = KVCache(k, v)
            L, S = q.shape[2], k.shape[2]
            if S == L:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:  # queries are the last L of S positions
                mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=S - L)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            keep = None if kpm is None else (~kpm)[:, None, None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            if padding_mask is not None:
                y = y * (~padding_mask)[:, None, :, None].to(y.dtype)
        return y, new_state
