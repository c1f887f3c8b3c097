"""Slot Attention (canonical) and the SMTC two-stage variant.

Locatello, Weissenborn, Unterthiner, Mahendran, Heigold, Uszkoreit, Dosovitskiy, Kipf (2020),
"Object-Centric Learning with Slot Attention", arXiv:2006.15055.
Qian, Ding, Liu, Lin (2023), "Semantics Meets Temporal Correspondence: Self-supervised
Object-centric Learning in Videos" (SMTC, ICCV 2023), arXiv:2308.09951 [authors and id: verify].

Inputs x [B, N, Din] (a [B, H, W, Din] map is flattened to N = H·W); K slots of size D.
One iteration (canonical, iters = 3):

    A = softmax_over_slots(k(LN x) · q(LN s)ᵀ / sqrt(D)) + 1e-8          [B, K, N]
    W = A / Σ_inputs A,   U = W v(LN x)                                    [B, K, D]
    s ← GRU(U, s);        s ← s + MLP(LN s)

Slots start at s ~ N(μ, diag exp(log σ)) with learnable μ, log σ (or are given).

SMTC variant (`SMTCSlotAttention`): no GRU (s ← s + U, then s ← s + MLP(LN s)).
- Stage 1, semantic slots: K slots initialised exactly at learnable means μ_k (no noise), 5
  iterations. Before the last iteration the slots are reset as s ← sg(s) − sg(s₀) + s₀: the value
  is unchanged, but only the last iteration and the initialisation receive gradient.
- Stage 2, instance slots: M per semantic slot, sampled from N(μ_k, exp σ_k); instance slot (k, m)
  may attend to input n only where the semantic attention A_sem[k, n] > threshold (0.3). Inputs
  that no instance slot may see get zero attention.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.vision.common import check_image

EPS = 1e-8


def _flatten_inputs(x, dim: int):
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        check_image(x, dim)
        return x.flatten(1, 2)
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != dim or not x.is_floating_point():
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"inputs must be a float tensor [B, N, {dim}] or [B, H, W, {dim}], got {got}")
    return x


class _SlotCore(nn.Module):
    def __init__(self, input_dim: int, slot_dim: int, n_slots: int, iters: int, mlp_hidden: int):
        super().__init__()
        if min(input_dim, slot_dim, n_slots, iters, mlp_hidden) < 1:
            raise ValueError("input_dim, slot_dim, n_slots, iters and mlp_hidden must all be >= 1")
        self.input_dim, self.slot_dim, self.n_slots, self.iters = input_dim, slot_dim, n_slots, iters
        self.norm_inputs = nn.LayerNorm(input_dim)
        self.norm_slots = nn.LayerNorm(slot_dim)
        self.norm_mlp = nn.LayerNorm(slot_dim)
        self.to_q = nn.Linear(slot_dim, slot_dim, bias=False)
        self.to_k = nn.Linear(input_dim, slot_dim, bias=False)
        self.to_v = nn.Linear(input_dim, slot_dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(slot_dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, slot_dim))
        self.mu = nn.Parameter(torch.randn(1, 1, slot_dim) * slot_dim**-0.5)
        self.log_sigma = nn.Parameter(torch.full((1, 1, slot_dim), -1.0))

    def check_slots(self, slots, B: int, K: int):
        if not isinstance(slots, torch.Tensor) or tuple(slots.shape) != (B, K, self.slot_dim):
            got = tuple(slots.shape) if isinstance(slots, torch.Tensor) else type(slots).__name__
            raise ValueError(f"slots must be [B, K, D] = [{B}, {K}, {self.slot_dim}], got {got}")

    def attention_logits(self, k, slots):
        """[B, K, N] = k(LN x) · q(LN s)ᵀ / sqrt(D)."""
        q = self.to_q(self.norm_slots(slots))
        return torch.einsum("bkd,bnd->bkn", q, k) * self.slot_dim**-0.5

    def update(self, slots, attn, v):
        """attn [B, K, N] (softmax over slots, +eps already added) -> U = weighted mean of v."""
        w = attn / attn.sum(-1, keepdim=True)
        return torch.einsum("bkn,bnd->bkd", w, v)

    def refine(self, slots, updates):
        raise NotImplementedError

    def step(self, slots, k, v, mask=None):
        """One iteration. mask [B, K, N] bool (True = slot may attend input) or None."""
        logits = self.attention_logits(k, slots)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
            seen = mask.any(1, keepdim=True)
            logits = torch.where(seen, logits, torch.zeros_like(logits))
            attn = torch.softmax(logits, 1) * seen.to(logits.dtype)
            upd = self.update(slots, attn + EPS * mask.to(attn.dtype), v)
        else:
            attn = torch.softmax(logits, 1)
            upd = self.update(slots, attn + EPS, v)
        slots = self.refine(slots, upd)
        return slots + self.mlp(self.norm_mlp(slots)), attn


class SlotAttention(_SlotCore):
    """Canonical Slot Attention: forward(x, slots=None, generator=None) -> (slots [B,K,D], attn [B,K,N])."""

    def __init__(
        self, input_dim: int, *, slot_dim: int = 64, n_slots: int = 4, iters: int = 3, mlp_hidden: int = 128,
    ):
        super().__init__(input_dim, slot_dim, n_slots, iters, mlp_hidden)
        self.gru = nn.GRUCell(slot_dim, slot_dim)

    def refine(self, slots, updates):
        B, K, D = slots.shape
        return self.gru(updates.reshape(B * K, D), slots.reshape(B * K, D)).view(B, K, D)

    def initial_slots(self, B: int, *, generator=None, dtype=None, device=None):
        noise = torch.randn(B, self.n_slots, self.slot_dim, generator=generator, device=device)
        return self.mu + self.log_sigma.exp() * noise.to(dtype or self.mu.dtype)

    def forward(self, x, *, slots=None, generator=None):
        x = _flatten_inputs(x, self.input_dim)
        B = x.shape[0]
        if slots is None:
            slots = self.initial_slots(B, generator=generator, dtype=x.dtype, device=x.device)
        self.check_slots(slots, B, slots.shape[1] if isinstance(slots, torch.Tensor) else self.n_slots)
        xn = self.norm_inputs(x)
        k, v = self.to_k(xn), self.to_v(xn)
        for _ in range(self.iters):
            slots, attn = self.step(slots, k, v)
        return slots, attn


class SMTCSlotAttention(_SlotCore):
    """Two-stage SMTC slots: forward(x) -> dict(semantic, semantic_attn, instance, instance_attn, instance_mask).

    semantic [B, K, D], semantic_attn [B, K, N]; instance [B, K, M, D], instance_attn [B, K, M, N],
    instance_mask [B, K, M, N].
    """

    def __init__(
        self, input_dim: int, *, slot_dim: int = 64, n_slots: int = 16, iters: int = 5, instances_per_slot: int = 4,
        threshold: float = 0.3, mlp_hidden: int = 128, detach_trick: bool = True,
    ):
        super().__init__(input_dim, slot_dim, n_slots, iters, mlp_hidden)
        if instances_per_slot < 1:
            raise ValueError(f"instances_per_slot must be >= 1, got {instances_per_slot}")
        self.instances, self.threshold, self.detach_trick = instances_per_slot, threshold, detach_trick
        self.mu = nn.Parameter(torch.randn(1, n_slots, slot_dim) * slot_dim**-0.5)  # one mean per semantic slot
        self.log_sigma = nn.Parameter(torch.full((1, n_slots, slot_dim), -1.0))

    def refine(self, slots, updates):
        return slots + updates

    def iterate(self, slots, k, v, *, iters: int, mask=None):
        s0, attn = slots, None
        for t in range(iters):
            if self.detach_trick and iters >= 2 and t == iters - 1:
                slots = slots.detach() - s0.detach() + s0
            slots, attn = self.step(slots, k, v, mask)
        return slots, attn

    def forward(self, x, *, generator=None):
        x = _flatten_inputs(x, self.input_dim)
        B, N, _ = x.shape
        K, M, D = self.n_slots, self.instances, self.slot_dim
        xn = self.norm_inputs(x)
        k, v = self.to_k(xn), self.to_v(xn)
        sem0 = self.mu.expand(B, K, D).to(x.dtype)
        semantic, sem_attn = self.iterate(sem0, k, v, iters=self.iters)
        noise = torch.randn(B, K, M, D, generator=generator, device=x.device).to(x.dtype)
        inst0 = self.mu[:, :, None] + self.log_sigma.exp()[:, :, None] * noise  # [B, K, M, D]
        mask = (sem_attn.detach() > self.threshold)[:, :, None, :].expand(B, K, M, N)
        inst, inst_attn = self.iterate(inst0.reshape(B, K * M, D), k, v, iters=self.iters,
                                       mask=mask.reshape(B, K * M, N))
        return {
            "semantic": semantic, "semantic_attn": sem_attn, "instance": inst.view(B, K, M, D),
            "instance_attn": inst_attn.view(B, K, M, N), "instance_mask": mask,
        }
