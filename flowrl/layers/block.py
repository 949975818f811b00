"""The pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

from __future__ import annotations

from torch import Tensor, nn

from flowrl.layers.attention import FlowAttention, SoftmaxAttention, select_positions
from flowrl.layers.dropout import Dropout

__all__ = ["MLP", "Block", "ATTENTIONS"]

ATTENTIONS = {"flow": FlowAttention, "softmax": SoftmaxAttention}
ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str = "gelu", dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.fc = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[activation]()
        self.proj = nn.Linear(hidden, dim)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class Block(nn.Module):
    """Pre-norm block around a Flow- or softmax-attention layer (``attention="flow" | "softmax"``)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        attention: str = "flow",
        causal: bool = False,
        dropout: float = 0.0,
        mlp_ratio: float = 4.0,
        activation: str = "gelu",
        clamp: float = 1.0,
        eps: float = 1e-6,
        chunk: int = 64,
        norm_eps: float = 1e-5,
    ):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ValueError(f"Block: unknown attention {attention!r}; choose one of {sorted(ATTENTIONS)}")
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        extra = {"clamp": clamp, "eps": eps, "chunk": chunk} if attention == "flow" else {}
        self.attn = ATTENTIONS[attention](dim, heads, causal=causal, dropout=dropout, **extra)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(round(dim * mlp_ratio)), activation, dropout)

    def forward(
        self,
        x: Tensor,
        *,
        padding_mask: Tensor | None = None,
        state=None,
        return_state: bool = False,
        select: slice | Tensor | None = None,
    ):
        """x [B, L, dim] -> [B, L, dim] (and the attention state when ``return_state``).

        ``select`` (a slice or a 1-d index tensor over L) keeps only those output positions: every position
        still enters attention as a key and value, but the output projection and MLP run on the kept ones
        alone, so ``block(x, select=s) == block(x)[:, s]`` at a fraction of the cost.
        """
        h = self.norm1(x)
        if return_state:
            a, new_state = self.attn(h, state=state, return_state=True, select=select)
        else:
            a, new_state = self.attn(h, padding_mask=padding_mask, state=state, select=select), None
        x = select_positions(x, select) + a
        x = x + self.mlp(self.norm2(x))
        return (x, new_state) if return_state else x
