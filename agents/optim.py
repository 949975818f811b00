"""The optimizer and learning-rate schedule every trainer builds: AdamW (fused where torch has it) with a
linear warmup, no weight decay on biases, norms and embeddings."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["adamw_with_warmup", "fused_kwargs", "make_optimizer", "param_groups"]


def fused_kwargs(device: torch.device) -> dict[str, bool]:
    """``fused=True`` where torch has a fused AdamW kernel (CPU, CUDA): one kernel over all parameters
    instead of a dozen small ops per tensor (3.9 -> 0.6 ms per DT update on the 2-core CPU)."""
    return {"fused": True} if device.type in ("cpu", "cuda") else {}


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and embeddings (as GPT-2/minGPT and the original DT)."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "embed" in name.split(".")[0] or "norm" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw_with_warmup(groups: list[dict[str, Any]], config, device: torch.device):
    """(AdamW over ``groups``, linear-warmup LambdaLR) with an agent config's lr and warmup_steps; betas
    (0.9, 0.999); fused on ``device`` where torch has it."""
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.999), **fused_kwargs(device))
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
    )
    return optimizer, scheduler


def make_optimizer(model: torch.nn.Module, config, device: torch.device):
    """(AdamW, linear-warmup LambdaLR) for ``model`` with an agent config's lr, weight decay and warmup.

    No weight decay on biases, norms and embeddings; betas (0.9, 0.999); fused where torch has it.
    """
    return adamw_with_warmup(param_groups(model, config.weight_decay), config, device)
