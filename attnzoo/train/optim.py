"""Optimizers and the learning-rate schedule used by the trainer.

AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101) or LAMB (lamb.py); in both, norms, biases
and other 1-D tensors get no weight decay. Schedule: linear warmup from 0 to lr over
`warmup` steps, then cosine decay to min_ratio·lr at `total` steps:

    s(t) = (t+1)/warmup                               for t < warmup (t counts from 0)
    s(t) = min_ratio + (1-min_ratio)·½(1 + cos(π·(t-warmup)/(total-warmup)))   after
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnzoo.train.lamb import LAMB, lamb_param_groups

OPTIMIZERS = ("adamw", "lamb")


def build_optimizer(model: nn.Module, *, name: str, lr: float, weight_decay: float,
                    betas=(0.9, 0.999), eps: float | None = None) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")
    groups = lamb_param_groups(model, weight_decay=weight_decay)
    if name == "lamb":
        return LAMB(groups, lr=lr, betas=betas, eps=1e-6 if eps is None else eps)
    for g in groups:
        g.pop("adapt")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8 if eps is None else eps)


def warmup_cosine(step: int, *, warmup: int, total: int, min_ratio: float = 0.1) -> float:
    """Multiplier of the peak learning rate at `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
