"""Optimisers, parameter groups, learning-rate scaling and the warmup + cosine schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

OPTIMIZERS = ("sgd", "adamw", "lars")
LR_SCALING = ("none", "linear", "sqrt")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights with decay, and biases / norm weights (ndim ≤ 1) without.

    timm's LARS adapts the learning rate only where weight decay is non-zero, so the second group
    is also excluded from LARS adaptation, as in SimCLR and MoCo v3.
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def scale_lr(base_lr: float, global_batch_size: int, rule: str) -> float:
    """`linear`: lr·B/256 (Goyal et al. 2017, SimCLR); `sqrt`: lr·√B (SimCLR for small batches); `none`."""
    if rule == "linear":
        return base_lr * global_batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(global_batch_size)
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling {rule!r}; valid rules: {', '.join(LR_SCALING)}")


def create_optimizer(
    model: nn.Module, name: str, *, lr: float, weight_decay: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    groups = parameter_groups(model, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "lars":
        from timm.optim import Lars

        return Lars(groups, lr=lr, momentum=momentum)
    raise ValueError(f"unknown optimizer {name!r}; valid names: {', '.join(OPTIMIZERS)}")


def warmup_cosine_lr(step: int, *, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup from 0 to `peak_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class LrSchedule:
    """`warmup_cosine_lr` of a run, a pure function of the step; `apply` sets it on an optimiser."""

    peak_lr: float
    warmup_steps: int
    total_steps: int

    def __call__(self, step: int) -> float:
        return warmup_cosine_lr(
            step, peak_lr=self.peak_lr, warmup_steps=self.warmup_steps, total_steps=self.total_steps
        )

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set the learning rate of step `step` (counted from 0) on every parameter group; returns it."""
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
