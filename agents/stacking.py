"""S models of one architecture as one module whose parameters carry a leading seed dimension.

``stack_models([m_0, ..., m_{S-1}])`` copies m_0's module tree and swaps every parameterised leaf for a
seed-stacked twin holding all S models' parameters: ``nn.Linear`` -> :class:`SeedLinear` (weight
[S, out, in], one batched product), ``nn.LayerNorm`` -> :class:`SeedLayerNorm`, ``nn.Embedding`` ->
:class:`SeedEmbedding`, and the attention modules' fused q/k/v product becomes one batched product over the
three stacked weights. Activations are stacked **seed-major along the first dimension**: the stacked module
maps ``[S·B, ...]`` to ``[S·B, ...]``, and rows ``s·B .. (s+1)·B - 1`` are model s's output on its own rows.
Everything without parameters -- the attention op, activations, the forward code of blocks and models --
runs unchanged on the S·B rows, so Flow-Attention simply sees S·B sequences. flowrl's ``Dropout`` modules get
one generator per seed (:func:`flowrl.layers.dropout.dropout`), so seed s draws the masks its own run would.

Seed s of the stacked module computes what model s computes, up to floating-point reassociation (a batched
product sums in another order than a single one). Parameter names are the single model's, so
:func:`seed_state_dict` is model s's state dict and :func:`load_seed_state_dicts` stacks S of them. Buffers
(e.g. the state normaliser) are shared: the S models must hold equal ones.

Example::

    models = [make_agent(cfg, obs_dim, act_dim, seed=s).model for s in range(5)]
    stacked = stack_models(models)
    y = stacked(*(torch.cat([x_s for x_s in seed_inputs]) for seed_inputs in ...))  # [5·B, ...]
    seed_state_dict(stacked, 2)  # == the state dict of models[2] (before any training)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowrl.layers.attention import FlowAttention, SoftmaxAttention
from flowrl.layers.dropout import Dropout

__all__ = [
    "SeedLinear",
    "SeedLayerNorm",
    "SeedEmbedding",
    "stack_models",
    "seed_count",
    "seed_state_dict",
    "load_seed_state_dicts",
    "keep_seeds",
    "seed_linear",
]


def seed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x [S·N..., in] (seed-major rows), weight [S, out, in], bias [S, out] -> [S·N..., out]."""
    S = weight.shape[0]
    x3 = x.reshape(S, -1, x.shape[-1])  # (S, rows of one seed, in)
    wt = weight.transpose(1, 2)
    y = torch.bmm(x3, wt) if bias is None else torch.baddbmm(bias.unsqueeze(1), x3, wt)
    return y.view(*x.shape[:-1], weight.shape[1])


class SeedLinear(nn.Module):
    """S linear layers: weight [S, out, in], bias [S, out] (or None); x [S·N..., in] -> [S·N..., out]."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: Tensor) -> Tensor:
        return seed_linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        S, out, inp = self.weight.shape
        return f"seeds={S}, in_features={inp}, out_features={out}, bias={self.bias is not None}"


class SeedLayerNorm(nn.Module):
    """S layer norms over the last dimension: weight and bias [S, dim]; x [S·N..., dim] -> same shape."""

    def __init__(self, weight: Tensor, bias: Tensor | None, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        S, d = self.weight.shape
        y = F.layer_norm(x, (d,), None, None, self.eps).view(S, -1, d)
        y = (
            y * self.weight.unsqueeze(1)
            if self.bias is None
            else torch.addcmul(self.bias[:, None], y, self.weight[:, None])
        )
        return y.view(x.shape)


class SeedEmbedding(nn.Module):
    """S lookup tables: weight [S, V, dim]; indices [S·N...] (seed-major) -> [S·N..., dim]."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, idx: Tensor) -> Tensor:
        S, V, d = self.weight.shape
        offsets = torch.arange(S, device=idx.device) * V  # seed s reads rows s·V .. s·V + V-1 of one table
        rows = idx.reshape(S, -1) + offsets[:, None]
        return F.embedding(rows, self.weight.reshape(S * V, d)).view(*idx.shape, d)


class _SeedProjection:
    """Self-attention's fused q/k/v product as one batched product over the S stacked weights."""

    def _project(self, x, context, padding_mask, context_padding_mask, state):
        if context is not None:  # cross-attention projects through the SeedLinear modules themselves
            return super()._project(x, context, padding_mask, context_padding_mask, state)
        self._check(x, context, padding_mask, state)
        projs = (self.query_projection, self.key_projection, self.value_projection)
        weight = torch.cat([p.weight for p in projs], dim=1)  # (S, 3·dim, dim)
        bias = None if projs[0].bias is None else torch.cat([p.bias for p in projs], dim=1)
        B, L, _ = x.shape
        qkv = seed_linear(x, weight, bias).view(B, L, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (S·B, H, L, dim/H)
        return q, k, v, padding_mask


class SeedFlowAttention(_SeedProjection, FlowAttention):
    """:class:`FlowAttention` over seed-stacked projections."""


class SeedSoftmaxAttention(_SeedProjection, SoftmaxAttention):
    """:class:`SoftmaxAttention` over seed-stacked projections."""


_SEED_ATTENTION = {FlowAttention: SeedFlowAttention, SoftmaxAttention: SeedSoftmaxAttention}
_SEED_LEAVES = (SeedLinear, SeedLayerNorm, SeedEmbedding)
M = TypeVar("M", bound=nn.Module)


def _stacked_leaf(name: str, leaves: list[nn.Module]) -> nn.Module:
    first = leaves[0]

    def stack_optional(attr: str) -> Tensor | None:
        values = [getattr(m, attr) for m in leaves]
        return None if values[0] is None else torch.stack([v.detach() for v in values])

    def stack(attr: str) -> Tensor:
        values = stack_optional(attr)
        # a weight: Linear and Embedding always have one, a LayerNorm's is checked below
        assert values is not None, f"{name}.{attr} is None"
        return values

    if type(first) is nn.Linear:
        return SeedLinear(stack("weight"), stack_optional("bias"))
    if type(first) is nn.LayerNorm:
        if len(first.normalized_shape) != 1 or first.weight is None:
            raise ValueError(
                f"stack_models: {name} normalises over {first.normalized_shape}; only a last-dim affine norm stacks"
            )
        return SeedLayerNorm(stack("weight"), stack_optional("bias"), first.eps)
    if type(first) is nn.Embedding:
        if first.padding_idx is not None or first.max_norm is not None or first.sparse:
            raise ValueError(f"stack_models: {name} uses padding_idx/max_norm/sparse, which do not stack")
        return SeedEmbedding(stack("weight"))
    raise ValueError(
        f"stack_models: cannot stack {name} ({type(first).__name__}): its parameters have no seed-stacked twin "
        "(only Linear, LayerNorm, Embedding and flowrl's attention modules stack)"
    )


def stack_models(models: Sequence[M], generators: list[torch.Generator] | None = None) -> M:
    """One module running ``models`` (S >= 1 of one architecture) side by side (see the module doc).

    ``generators``: one dropout generator per model (None: torch's default generator for every seed, which
    gives each seed other masks than its own run). The list object is shared by every dropout module, so
    :func:`keep_seeds` can shrink it in place.
    """
    if not models:
        raise ValueError("stack_models: no models")
    S = len(models)
    if generators is not None and len(generators) != S:
        raise ValueError(f"stack_models: {len(generators)} generators for {S} models")
    structure = [[(n, type(m)) for n, m in model.named_modules()] for model in models]
    if any(s != structure[0] for s in structure[1:]):
        raise ValueError("stack_models: the models differ in structure; stack copies of one architecture")
    for name, buf in models[0].named_buffers():
        for k, model in enumerate(models[1:], 1):
            if not torch.equal(model.get_buffer(name), buf):
                raise ValueError(
                    f"stack_models: buffer {name} differs between model 0 and model {k}; buffers are shared"
                )
    stacked = copy.deepcopy(models[0])
    for name, module in list(stacked.named_modules()):
        if type(module) in _SEED_ATTENTION:
            module.__class__ = _SEED_ATTENTION[type(module)]
        elif isinstance(module, Dropout):
            module.generators = generators
        elif isinstance(module, nn.Dropout) and module.p > 0:
            raise ValueError(f"stack_models: {name} is torch's nn.Dropout; use flowrl.layers.Dropout (per-seed masks)")
        if name and next(module.parameters(recurse=False), None) is not None:
            parent, _, attr = name.rpartition(".")
            leaf = _stacked_leaf(name, [m.get_submodule(name) for m in models])
            setattr(stacked.get_submodule(parent), attr, leaf)
    for name, module in stacked.named_modules():
        if next(module.parameters(recurse=False), None) is not None and not isinstance(module, _SEED_LEAVES):
            raise ValueError(f"stack_models: {name or 'the model'} has parameters of its own, which do not stack")
    return stacked


def is_stacked(module: nn.Module) -> bool:
    """Whether ``module`` is (or holds) a seed-stacked module, whose activations are S·B rows, seed-major."""
    return any(isinstance(m, _SEED_LEAVES) for m in module.modules())


def seed_count(stacked: nn.Module) -> int:
    """S, the number of models in a stacked module."""
    return next(stacked.parameters()).shape[0]


def seed_state_dict(stacked: nn.Module, s: int) -> dict[str, Tensor]:
    """Model s's state dict (CPU copies): parameters sliced at s, shared buffers as they are."""
    params = dict(stacked.named_parameters())
    return {k: (v[s] if k in params else v).detach().cpu().clone() for k, v in stacked.state_dict().items()}


def load_seed_state_dicts(stacked: nn.Module, states: Sequence[dict[str, Tensor]]) -> None:
    """Set a stacked module from S single-model state dicts (buffers from the first; all must agree)."""
    S = seed_count(stacked)
    if len(states) != S:
        raise ValueError(f"load_seed_state_dicts: {len(states)} state dicts for {S} seeds")
    params = dict(stacked.named_parameters())
    own = stacked.state_dict()
    for k, state in enumerate(states):
        if set(state) != set(own):
            missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(
                f"seed {k}'s state dict does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    merged = {}
    for key, value in own.items():
        if key in params:
            merged[key] = torch.stack([s[key].to(value.dtype) for s in states])
        else:
            merged[key] = states[0][key]
    stacked.load_state_dict(merged)


def keep_seeds(stacked: nn.Module, keep: Sequence[int], optimizer: torch.optim.Optimizer | None = None) -> None:
    """Drop every seed not in ``keep`` (positions, in order), in place: the parameters (same objects, so an
    optimizer over them stays valid), their gradients, the optimizer's per-parameter state and the dropout
    generators."""
    idx = torch.as_tensor(list(keep), dtype=torch.long)
    if idx.numel() == 0:
        raise ValueError("keep_seeds: at least one seed must stay")
    for p in stacked.parameters():
        i = idx.to(p.device)
        p.data = p.data.index_select(0, i)
        p.grad = None
        if optimizer is not None and p in optimizer.state:
            state = optimizer.state[p]
            for name, value in list(state.items()):
                if torch.is_tensor(value) and value.dim() > 0:
                    state[name] = value.index_select(0, i)
    # the list object stack_models shares with every dropout module: shrunk in place
    gens = next((m.generators for m in stacked.modules() if isinstance(m, Dropout) and m.generators is not None), None)
    assert gens is None or isinstance(gens, list), "stack_models gives dropout modules a list of generators"
    if gens is not None:
        gens[:] = [gens[k] for k in keep]
