"""Label-wise (code-wise) attention read-out and the LDAM margin loss.

TransICD: Biswas, Pham & Zhang 2021, "TransICD: Transformer Based Code-wise Attention Model for
Explainable ICD Coding", arXiv:2104.10652 (code-wise attention); LDAM: Cao et al. 2019,
"Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss", arXiv:1906.07413.

    H [B, S, d] token states, mask [B, S] (True = real)
    scores  = W2 tanh(W1 H)               (learned queries, TransICD)   -> [B, S, C]
           or  H E_labelᵀ                 (given label embeddings as queries, LDAM-style)
    A       = softmax over tokens S (padding -> -inf)                    [B, C, S]
    V_c     = Σ_s A_cs H_s                                               [B, C, d]
    logit_c = w_cᵀ V_c + b_c              (one linear head per label)    [B, C]

LDAM margin for multi-label BCE: Δ_c = C_ldam / n_c^{1/4} (n_c = training frequency, 0 -> 1),
training logits ŷ − y ⊙ Δ (only positives shifted); inference uses the raw logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LabelAttention(nn.Module):
    def __init__(self, d_model: int, n_labels: int, *, expansion: int = 2, label_queries: torch.Tensor | None = None):
        """label_queries [n_labels, d_model]: given label embeddings used as attention queries
        (kept fixed); None: learned code-wise attention W2 tanh(W1 H) with W1: d -> expansion·d."""
        super().__init__()
        self.d_model, self.n_labels = d_model, n_labels
        if label_queries is not None:
            if tuple(label_queries.shape) != (n_labels, d_model):
                raise ValueError(f"label_queries must be [n_labels, d_model] = [{n_labels}, {d_model}], "
                                 f"got {tuple(label_queries.shape)}")
            self.register_buffer("label_queries", label_queries.clone())
            self.w1 = self.w2 = None
        else:
            self.label_queries = None
            self.w1 = nn.Linear(d_model, expansion * d_model)
            self.w2 = nn.Linear(expansion * d_model, n_labels, bias=False)
        # C separate Linear(d, 1) heads, stored as one [C, d] weight and [C] bias
        self.head_weight = nn.Parameter(torch.randn(n_labels, d_model) * d_model**-0.5)
        self.head_bias = nn.Parameter(torch.zeros(n_labels))

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None):
        """h [B, S, d], mask [B, S] bool -> (logits [B, C], attention [B, C, S])."""
        if h.dim() != 3 or h.shape[-1] != self.d_model:
            raise ValueError(f"h must be [B, S, {self.d_model}], got {tuple(h.shape)}")
        if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != tuple(h.shape[:2])):
            raise ValueError(f"mask must be bool [B, S] = {tuple(h.shape[:2])}, got {mask.dtype} {tuple(mask.shape)}")
        if self.label_queries is not None:
            scores = h @ self.label_queries.to(h.dtype).t()
        else:
            scores = self.w2(torch.tanh(self.w1(h)))
        scores = scores.transpose(1, 2)  # [B, C, S]
        if mask is not None:
            scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        per_label = attn @ h  # [B, C, d]
        logits = (per_label * self.head_weight).sum(-1) + self.head_bias
        return logits, attn


def ldam_margins(class_counts: torch.Tensor, c_ldam: float = 3.0) -> torch.Tensor:
    """Δ_c = c_ldam / n_c^{1/4}, with n_c = 0 treated as 1."""
    n = class_counts.double().clamp_min(1)
    return (c_ldam / n.pow(0.25)).float()


def ldam_bce_loss(logits: torch.Tensor, targets: torch.Tensor, margins: torch.Tensor) -> torch.Tensor:
    """Multi-label BCE on margin-shifted logits ŷ − y ⊙ Δ (logits, targets [B, C]; margins [C])."""
    if logits.shape != targets.shape or margins.shape != logits.shape[-1:]:
        raise ValueError(f"logits/targets must be [B, C] and margins [C]; got {tuple(logits.shape)}, "
                         f"{tuple(targets.shape)}, {tuple(margins.shape)}")
    t = targets.to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits - t * margins.to(logits.dtype), t)
