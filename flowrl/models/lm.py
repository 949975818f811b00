"""A causal language model on the Flowformer trunk, with ``generate()`` on the recurrent state.

With ``trunk.attention="flow"`` each generated token costs O(1) in the context length: the trunk carries
a constant-size :class:`~flowrl.ops.FlowState` per layer. With ``"softmax"`` the state is a KV cache
(each step attends over the cache, O(L)). Example::

    lm = CausalLM(CausalLMConfig(vocab_size=96, trunk=FlowformerConfig(dim=128, depth=4, causal=True)))
    logits = lm(ids)  # ids [B, L] -> next-token logits [B, L, vocab_size]
    out = lm.generate(prompt, max_new_tokens=200, temperature=0.8, top_k=20)  # [B, L + 200]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowrl.models.classifiers import _check, _check_common, _trunk_config, check_token_ids, make_positions
from flowrl.models.config import FlowformerConfig, JsonConfig
from flowrl.models.decoder import FlowDecoder
from flowrl.models.flowformer import Flowformer

__all__ = ["CausalLM", "CausalLMConfig", "LMState"]

_PREFILL_CHUNK = 64  # prompt tokens per decoder call in generate(): its L×L score matrix stays small


def _causal_trunk() -> FlowformerConfig:
    return FlowformerConfig(causal=True)


@dataclass
class CausalLMConfig(JsonConfig):
    """Token ids -> next-token logits."""

    vocab_size: int
    """Number of token ids; valid ids are 0..vocab_size-1."""
    trunk: FlowformerConfig = field(default_factory=_causal_trunk)
    """The Flowformer trunk (must be causal)."""
    positions: str = "sinusoidal"
    """"sinusoidal" (generation may run past the training length), "learned" (max_len limit) or "none"."""
    max_len: int = 1024
    """Learned positions only: the longest sequence, prompt plus generated tokens; longer is an error."""
    tie_weights: bool = False
    """Share the token embedding matrix with the output layer."""

    def __post_init__(self) -> None:
        owner = type(self).__name__
        self.trunk = _trunk_config(self.trunk, owner, causal=True)
        _check(self.vocab_size >= 1, owner, "vocab_size", f"must be >= 1, got {self.vocab_size}")
        _check_common(self, owner)


class LMState(NamedTuple):
    """Where a sequence stands: the trunk's per-layer states and the number of tokens seen."""

    layers: list
    position: int


class CausalLM(nn.Module):
    """Token ids ``[B, L]`` -> next-token logits ``[B, L, vocab_size]`` (position t predicts token t+1)."""

    config_class = CausalLMConfig

    def __init__(self, config: CausalLMConfig):
        super().__init__()
        self.config = config
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.trunk.dim)
        self.positions = make_positions(c.positions, c.max_len, c.trunk.dim)
        self.trunk = Flowformer(c.trunk)
        self.head = nn.Linear(c.trunk.dim, c.vocab_size, bias=False)
        if c.tie_weights:
            self.head.weight = self.embed.weight

    def _check_length(self, end: int) -> None:
        c = self.config
        if c.positions == "learned" and end > c.max_len:
            raise ValueError(
                f"CausalLM: sequence of {end} tokens exceeds max_len={c.max_len}, the size of the learned "
                f"position table; keep prompt + new tokens <= {c.max_len} or use positions='sinusoidal'"
            )

    def forward(self, ids: Tensor, *, state: LMState | None = None, return_state: bool = False):
        """ids [B, L] -> logits [B, L, vocab_size] (and the :class:`LMState` after them, if ``return_state``).

        ``state`` continues the sequence that produced it: ``lm(ids[:, :k], return_state=True)`` then
        ``lm(ids[:, k:], state=s)`` gives the same logits as ``lm(ids)``.
        """
        check_token_ids(ids, self.config.vocab_size, "CausalLM")
        start = 0 if state is None else state.position
        L = ids.shape[1]
        self._check_length(start + L)
        x = self._embed(ids, start)
        if not return_state and state is None:
            return self.head(self.trunk(x))
        h, layers = self.trunk(x, state=None if state is None else state.layers, return_state=True)
        logits = self.head(h)
        return (logits, LMState(layers, start + L)) if return_state else logits

    def _embed(self, ids: Tensor, start: int) -> Tensor:
        """Token plus position embeddings of ids [B, L] at positions start.., [B, L, dim]."""
        x = self.embed(ids)
        if self.positions is not None:
            x = x + self.positions(torch.arange(start, start + ids.shape[1], device=ids.device)).to(x.dtype)
        return x

    @torch.no_grad()
    def generate(
        self,
        prompt: Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        greedy: bool = False,
        generator: torch.Generator | None = None,
        use_state: bool = True,
    ) -> Tensor:
        """Continue ``prompt`` ([B, L] or [L] ids, L >= 1) by ``max_new_tokens`` tokens; returns prompt + new.

        Sampling from softmax(logits / temperature) restricted to the ``top_k`` most likely tokens;
        ``greedy=True`` or ``temperature=0`` takes the argmax. ``use_state=True`` feeds one token per step
        through the recurrent state (flow: O(1) per token in the context length, through a
        :class:`~flowrl.models.FlowDecoder`; softmax: a KV cache);
        ``use_state=False`` recomputes the whole prefix at every step (O(L) per token, for checks and
        benchmarks; same tokens). Runs in eval mode (no dropout), restoring the training flag after.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"CausalLM.generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        if temperature < 0:
            raise ValueError(f"CausalLM.generate: temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"CausalLM.generate: top_k must be >= 1 or None, got {top_k}")
        squeeze = prompt.dim() == 1
        ids = prompt[None] if squeeze else prompt
        check_token_ids(ids, self.config.vocab_size, "CausalLM.generate")
        if ids.shape[1] < 1:
            raise ValueError("CausalLM.generate: the prompt needs at least one token")
        self._check_length(ids.shape[1] + max_new_tokens)
        greedy = greedy or temperature == 0
        was_training = self.training
        self.eval()
        try:
            out = [ids]
            state = None
            decoder = FlowDecoder(self.trunk, ids.shape[0]) if use_state and self._flow_causal() else None
            for step in range(max_new_tokens):
                if decoder is not None:
                    start = 0 if step == 0 else ids.shape[1] + step - 1
                    x = self._embed(ids if step == 0 else out[-1], start)
                    for a in range(0, x.shape[1], _PREFILL_CHUNK):  # the prompt in chunks: bounded memory
                        h = decoder.step(x[:, a : a + _PREFILL_CHUNK])
                    logits = self.head(h.to(self.head.weight.dtype))[:, None]
                elif not use_state:
                    logits = self(torch.cat(out, dim=1))
                elif step == 0:
                    logits, state = self(ids, return_state=True)
                else:
                    logits, state = self(out[-1], state=state, return_state=True)
                out.append(self._pick(logits[:, -1].float(), temperature, top_k, greedy, generator))
        finally:
            self.train(was_training)
        result = torch.cat(out, dim=1)
        return result[0] if squeeze else result

    def _flow_causal(self) -> bool:
        c = self.config.trunk
        return c.attention == "flow" and c.causal

    @staticmethod
    def _pick(logits: Tensor, temperature: float, top_k: int | None, greedy: bool, generator) -> Tensor:
        """logits [B, V] -> next ids [B, 1]."""
        if greedy:
            return logits.argmax(dim=-1, keepdim=True)
        logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = F.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)
