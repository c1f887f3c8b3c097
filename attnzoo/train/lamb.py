"""LAMB: layer-wise adaptive moments for large-batch training.

You, Li, Reddi, Hseu, Kumar, Bhojanapalli, Song, Demmel, Keutzer, Hsieh (2020), "Large Batch
Optimization for Deep Learning: Training BERT in 76 minutes", ICLR 2020, arXiv:1904.00962.

Per parameter tensor w with gradient g, at step t (Algorithm 2 of the ICLR version, arXiv v5;
each option's variant in parentheses):

    g ← g / max(1, ‖G‖₂/max_grad_norm)     G: all gradients of all groups (max_grad_norm; off by default)
    m = β₁m + (1-β₁)g                      (grad_averaging=False: m = β₁m + g)
    v = β₂v + (1-β₂)g²
    m̂ = m/(1-β₁ᵗ),  v̂ = v/(1-β₂ᵗ)          (bias_correction=False: m̂ = m, v̂ = v)
    u = m̂/(√v̂ + ε) + λw
    τ = ‖w‖₂/‖u‖₂                          (τ = 1 when either norm is 0); τ ← min(τ, trust_clip) if set
    w ← w - η·τ·u

"Decoupled" weight decay here means Algorithm 2's: λw is added to the update u inside the
trust ratio (τ scales decay and Adam step together), not AdamW's decay applied outside the step
(w ← w - ηλw beside the Adam update).

Norms are per tensor (the "layer"). The trust ratio is used in groups with adapt=True; with
always_adapt=True (the default, as in Algorithm 2) also where λ = 0, with always_adapt=False only
where λ ≠ 0 (timm Lamb's always_adapt, apex FusedLAMB's use_nvlamb; both default to False there).
`lamb_param_groups` leaves norms and biases out of weight decay and out of layer adaptation
(λ = 0, adapt=False: τ = 1), as the paper's BERT setup does.

Defaults follow Algorithm 2 (and this module's earlier behaviour): bias correction and gradient
averaging on, no clipping of τ, no gradient clipping. For the BERT setup, NVIDIA's implementation
(apex FusedLAMB, default max_grad_norm=1.0) clips the global gradient norm before the update:
`max_grad_norm=1.0` here; the trainer already clips the same global norm with its own
`grad_clip`, so it leaves this off. `trust_clip=c` bounds τ ≤ c; `trust_clip=1.0` is timm's
trust_clip=True (LAMBC, Fong et al. 2020, arXiv:2011.13584: then ‖τu‖ = min(‖w‖, ‖u‖)).
The paper's scaling φ(‖w‖) = min(max(‖w‖, γ_l), γ_u) is taken as φ(z) = z (no bounds offered).
"""

from __future__ import annotations

import functools
import re

import torch
from torch import nn

NO_DECAY_PATTERNS = (r"norm", r"bias")


def decays(name: str, ndim: int, exclude=NO_DECAY_PATTERNS) -> bool:
    """The weight-decay rule: tensors of >= 2 dims whose names match none of `exclude` (norms, biases)."""
    return ndim >= 2 and not any(re.search(pat, name) for pat in exclude)


def lamb_param_groups(model: nn.Module, *, weight_decay: float, exclude=NO_DECAY_PATTERNS) -> list[dict]:
    """Two groups: decayed + adapted tensors, and excluded ones (names matching `exclude`, or 1-D)."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if decays(name, p.dim(), exclude) else keep).append(p)
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay, "adapt": True})
    if keep:
        groups.append({"params": keep, "weight_decay": 0.0, "adapt": False})
    return groups


class LAMB(torch.optim.Optimizer):
    """LAMB over `params` (tensors or groups); every option but max_grad_norm may be set per group.

    Moments are kept in float32 for bf16/fp16 parameters (float64 for float64 ones); p.grad is
    not modified (clipping works on a copy). Global clipping needs every gradient's norm first,
    one pass over all groups before the update."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, adapt: bool = True, *, always_adapt: bool = True,
                 bias_correction: bool = True, grad_averaging: bool = True, trust_clip: float | None = None,
                 max_grad_norm: float | None = None):
        if lr < 0:
            raise ValueError(f"lr must be >= 0, got {lr}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if eps < 0 or weight_decay < 0:
            raise ValueError(f"eps and weight_decay must be >= 0, got eps={eps}, weight_decay={weight_decay}")
        _check_bound("trust_clip", trust_clip)
        _check_bound("max_grad_norm", max_grad_norm)
        self.max_grad_norm = max_grad_norm
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay, "adapt": adapt,
                    "always_adapt": always_adapt, "bias_correction": bias_correction,
                    "grad_averaging": grad_averaging, "trust_clip": trust_clip}
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_bound("trust_clip", group["trust_clip"])

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:         # groups saved before these options existed
            group.setdefault("always_adapt", True)
            group.setdefault("bias_correction", True)
            group.setdefault("grad_averaging", True)
            group.setdefault("trust_clip", None)

    def load_state_dict(self, state_dict):
        """torch casts loaded state to each parameter's dtype; LAMB keeps float32 moments for
        low-precision parameters, so they are put back at the dtype they were saved in."""
        super().load_state_dict(state_dict)
        saved = state_dict["state"]
        for g_saved, group in zip(state_dict["param_groups"], self.param_groups):
            for pid, p in zip(g_saved["params"], group["params"]):
                for key in ("exp_avg", "exp_avg_sq"):
                    t = saved.get(pid, {}).get(key)
                    if torch.is_tensor(t) and t.dtype == _state_dtype(p) != self.state[p][key].dtype:
                        self.state[p][key] = t.to(device=p.device, copy=True)

    def _clip_factor(self):
        """max(1, ‖G‖₂/max_grad_norm) over every gradient of every group, or None when off."""
        if self.max_grad_norm is None:
            return None
        norms = [p.grad.to(_state_dtype(p)).norm() for g in self.param_groups for p in g["params"]
                 if p.grad is not None]
        if not norms:
            return None
        dt = functools.reduce(torch.promote_types, [n.dtype for n in norms])
        total = torch.stack([n.to(device=norms[0].device, dtype=dt) for n in norms]).norm()
        return (total / self.max_grad_norm).clamp_min(1.0)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise ValueError("LAMB does not support sparse gradients")
        clip = self._clip_factor()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            use_tau = group["adapt"] and (group["always_adapt"] or group["weight_decay"] != 0)
            for p in group["params"]:
                if p.grad is None:
                    continue
                dt = _state_dtype(p)                  # bf16/fp16 params: fp32 moments
                g = p.grad.to(dt)
                if clip is not None:
                    g = g / clip.to(g.device)
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["exp_avg"] = torch.zeros_like(p, dtype=dt)
                    st["exp_avg_sq"] = torch.zeros_like(p, dtype=dt)
                st["step"] += 1
                t = st["step"]
                m, v = st["exp_avg"], st["exp_avg_sq"]
                m.mul_(b1).add_(g, alpha=1 - b1 if group["grad_averaging"] else 1.0)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                if group["bias_correction"]:
                    m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
                else:
                    m_hat, v_hat = m, v
                w = p.to(dt)
                u = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    u = u + group["weight_decay"] * w
                tau = 1.0
                if use_tau:
                    w_norm, u_norm = w.norm(), u.norm()
                    tau = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm.clamp_min(1e-30),
                                      torch.ones_like(w_norm))
                    if group["trust_clip"] is not None:
                        tau = tau.clamp(max=group["trust_clip"])
                p.copy_((w - group["lr"] * tau * u).to(p.dtype))
        return loss


def _state_dtype(p: torch.Tensor) -> torch.dtype:
    return torch.promote_types(p.dtype, torch.float32)


def _check_bound(name: str, value):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be None (off) or a number > 0, got {value!r}"
                         + (" (trust_clip=1.0 is timm's trust_clip=True)" if name == "trust_clip" else ""))
