"""Distillation losses: teacher -> student, each a plain function, combined by `DistillWeights`.

Knowledge distillation (Hinton, Vinyals & Dean 2015, arXiv:1503.02531): logits at a temperature τ,

    L_kd = τ² · mean_tokens KL( softmax(z_t/τ) || softmax(z_s/τ) )

Hidden-state transfer (TinyBERT, Jiao et al. 2019, arXiv:1909.10351): L_hid = mean_layers MSE(h_s, h_t).
Attention transfer (LoLCATs, Zhang et al. 2024, arXiv:2410.10254; LAWCAT arXiv:2509.18467): the
student mixer and the teacher attention see the same input, L_at = mean_layers MSE(y_mixer, y_attn).
Attention-map KL (Hedgehog, Zhang et al. 2024, arXiv:2402.04347): for students that expose their
weights, L_map = mean_rows KL(A_t || A_s) over the keys.

Every loss takes float tensors of the same shape (logits [B, T, V], hidden [B, T, d], weights
[B, H, T, T]) and an optional bool mask [B, T] (True = real token) that selects the rows scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _check_pair(student: torch.Tensor, teacher: torch.Tensor, what: str):
    if student.shape != teacher.shape:
        raise ValueError(f"{what}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} differ in shape")


def _masked_mean(per_row: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """per_row [B, T] -> mean over the rows where mask is True (all rows when mask is None)."""
    if mask is None:
        return per_row.mean()
    if mask.shape != per_row.shape:
        raise ValueError(f"mask must be [B, T] = {tuple(per_row.shape)}, got {tuple(mask.shape)}")
    m = mask.to(per_row.dtype)
    return (per_row * m).sum() / m.sum().clamp_min(1.0)


def logit_kd(student_logits, teacher_logits, *, temperature: float = 2.0, mask=None) -> torch.Tensor:
    """τ² · mean KL(p_t || p_s) of the softened distributions over the last dim ([B, T, V])."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    _check_pair(student_logits, teacher_logits, "logit_kd")
    log_ps = F.log_softmax(student_logits.float() / temperature, -1)
    log_pt = F.log_softmax(teacher_logits.float() / temperature, -1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    return temperature**2 * _masked_mean(kl, mask)


def hidden_mse(student, teacher, *, mask=None) -> torch.Tensor:
    """Mean squared error over the feature dim, averaged over scored rows; lists are averaged per layer."""
    if isinstance(student, (list, tuple)):
        if len(student) != len(teacher) or not student:
            raise ValueError(f"hidden_mse: {len(student)} student and {len(teacher)} teacher layers")
        return sum(hidden_mse(s, t, mask=mask) for s, t in zip(student, teacher)) / len(student)
    _check_pair(student, teacher, "hidden_mse")
    return _masked_mean((student.float() - teacher.float()).pow(2).mean(-1), mask)


def attention_transfer(student_outputs, teacher_outputs, *, mask=None) -> torch.Tensor:
    """Layer-wise output MSE between each student mixer and the teacher attention it replaces
    (both run on the teacher's input to that layer): LoLCATs' stage-1 loss."""
    return hidden_mse(list(student_outputs), list(teacher_outputs), mask=mask)


def attention_map_kl(student_weights, teacher_weights, *, mask=None, eps: float = 1e-8) -> torch.Tensor:
    """mean over query rows of KL(A_t || A_s); weights [B, H, T, S], each row sums to 1.

    mask [B, T] selects the query rows scored (a masked key has weight 0 in both)."""
    _check_pair(student_weights, teacher_weights, "attention_map_kl")
    t, s = teacher_weights.float(), student_weights.float()
    kl = (t * (torch.log(t + eps) - torch.log(s + eps))).sum(-1).mean(1)      # [B, T]
    return _masked_mean(kl, mask)


def next_token_ce(logits, labels) -> torch.Tensor:
    """Mean cross-entropy over the scored tokens (labels -100 elsewhere)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX)


@dataclass
class DistillWeights:
    """Weights of the combined loss: ce·CE + kd·KD(τ) + hidden·MSE(hidden) + transfer·MSE(mixer outputs).

    LoLCATs' stage 1 is transfer=1000 (their mse_factor) and the rest 0; stage 2 is ce=1."""

    ce: float = 1.0
    kd: float = 0.0
    temperature: float = 2.0
    hidden: float = 0.0
    transfer: float = 0.0

    def check(self):
        for name in ("ce", "kd", "hidden", "transfer"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss weight {name} must be >= 0, got {getattr(self, name)}")
        if not any((self.ce, self.kd, self.hidden, self.transfer)):
            raise ValueError("at least one loss weight must be positive")


def combined_loss(weights: DistillWeights, *, student_logits=None, teacher_logits=None, labels=None,
                  student_hidden=None, teacher_hidden=None, student_outputs=None, teacher_outputs=None,
                  mask=None) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the losses whose weight is positive -> (total, {name: float value})."""
    weights.check()
    parts = {}
    if weights.ce:
        parts["ce"] = (weights.ce, next_token_ce(student_logits, labels))
    if weights.kd:
        parts["kd"] = (weights.kd, logit_kd(student_logits, teacher_logits, temperature=weights.temperature,
                                            mask=mask))
    if weights.hidden:
        parts["hidden"] = (weights.hidden, hidden_mse(student_hidden, teacher_hidden, mask=mask))
    if weights.transfer:
        parts["transfer"] = (weights.transfer, attention_transfer(student_outputs, teacher_outputs, mask=mask))
    total = sum(w * v for w, v in parts.values())
    return total, {k: float(v.detach()) for k, (_, v) in parts.items()}
