"""LAMB: layer-wise adaptive moments for large-batch training.

You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer, Hsieh (2020), "Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020, arXiv:1904.00962.

Per parameter tensor w with gradient g, at step t:

    m = β₁m + (1-β₁)g,   v = β₂v + (1-β₂)g²,   m̂ = m/(1-β₁ᵗ),   v̂ = v/(1-β₂ᵗ)
    u = m̂/(√v̂ + ε) + λw                                (decoupled weight decay inside u)
    τ = ‖w‖₂/‖u‖₂   (τ = 1 when either norm is 0, or when the group has adapt=False)
    w ← w - η·τ·u

Norms are per tensor (the "layer"). `lamb_param_groups` leaves norms and biases out of weight
decay and out of layer adaptation (λ = 0, τ = 1), as the paper's BERT setup does.
"""

from __future__ import annotations

import re

import torch
from torch import nn

NO_DECAY_PATTERNS = (r"norm", r"bias")


def lamb_param_groups(model: nn.Module, *, weight_decay: float, exclude=NO_DECAY_PATTERNS) -> list[dict]:
    """Two groups: decayed + adapted tensors, and excluded ones (names matching `exclude`, or 1-D)."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        excluded = p.dim() < 2 or any(re.search(pat, name) for pat in exclude)
        (keep if excluded else decay).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "adapt": True})
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0, "adapt": False})
    return groups


class LAMB(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, adapt: bool = True):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got eps={eps}, weight_decay={weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "adapt": adapt}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("LAMB does not support sparse gradients")
                dt = torch.promote_types(p.dtype, torch.float32)    # bf16/fp16 params: fp32 moments
                g = p.grad.to(dt)
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, dtype=dt)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=dt)
                st["step"] += 1
                t = st["step"]
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = m / (1 - b1 ** t)
                v_hat = v / (1 - b2 ** t)
                w = p.to(dt)
                u = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    u = u + group["weight_decay"] * w
                tau = 1.0
                if group["adapt"]:
                    w_norm, u_norm = w.norm(), u.norm()
                    tau = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm.clamp_min(1e-30),
                                      torch.ones_like(w_norm))
                p.copy_((w - group["lr"] * tau * u).to(p.dtype))
        return loss
