"""LoRA: low-rank adapters on chosen Linears (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large
Language Models", arXiv:2106.09685), as LoLCATs' stage 2 uses them (r=8, alpha=16, on q, k, v, o).

    h = W x + b + (alpha / r) · B (A dropout(x))        A [r, in] (Kaiming-uniform), B [out, r] = 0

so a freshly wrapped model computes exactly what it did before. `merge_lora` folds B A into W
(W' = W + (alpha/r) B A) and puts plain Linears back: the merged model equals the wrapped one.

    names = apply_lora(model, targets=("q_proj", "k_proj", "v_proj", "o_proj"), r=8, alpha=16)
    ... train: only the lora_A / lora_B parameters require grad ...
    merge_lora(model)
"""

from __future__ import annotations

import math

import torch
from torch import nn

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable rank-r update scaled by alpha / r."""

    def __init__(self, base: nn.Linear, *, r: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if r < 1:
            raise ValueError(f"LoRA rank r must be >= 1, got {r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {dropout}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight W + (alpha/r) B A (for code that reads a Linear's weight)."""
        return self.base.weight + self.scaling * (self.lora_B @ self.lora_A)

    @property
    def bias(self):
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x):
        update = (self.dropout(x) @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype)
        return self.base(x) + self.scaling * update

    def merged(self) -> nn.Linear:
        w = self.base.weight
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None, device=w.device,
                        dtype=w.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out

    def extra_repr(self):
        return f"r={self.r}, alpha={self.alpha}"


def _matches(name: str, targets) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def apply_lora(model: nn.Module, *, targets=LORA_TARGETS, r: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               freeze_rest: bool = True) -> list[str]:
    """Wrap every nn.Linear whose qualified name is, or ends with, one of `targets` (a last name such
    as "q_proj" or a dotted tail such as "attention.output.dense"). freeze_rest: every other
    parameter stops requiring grad. Returns the wrapped module names (ValueError when none match)."""
    wrapped = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, targets)]
    if not wrapped:
        raise ValueError(f"no nn.Linear named {tuple(targets)} in {type(model).__name__}")
    if freeze_rest:
        for p in model.parameters():
            p.requires_grad_(False)
    for name, module in wrapped:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, LoRALinear(module, r=r, alpha=alpha, dropout=dropout))
    return [n for n, _ in wrapped]


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by a plain Linear holding W + (alpha/r) B A (in place; returns model)."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name, module in found:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, module.merged())
    return model


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.endswith("lora_A") or n.endswith("lora_B")]
