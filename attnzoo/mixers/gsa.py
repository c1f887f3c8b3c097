"""Gated slot attention (GSA): Zhang, Yang, Zhu, Zhang, Cui, Wang, Wang, Shi, Wang, Bi, Zhou & Fu (2024), "Gated
Slot Attention for Efficient Linear-Time Sequence Modeling", arXiv:2409.07146 (NeurIPS 2024).

    q_t, k_t, v_t = Swish(x_t W_q), Swish(x_t W_k), Swish(x_t W_v)            per head [d_k], [d_k], [d_v]
    α_t = sigmoid(x_t W_α)^{1/τ}                    a forget gate per slot [m]; the damping τ = 8 pulls it to 1
    K̃_t = Diag(α_t) K̃_{t-1} + (1 - α_t) k_tᵀ      K̃ [m, d_k]: the slots' keys
    Ṽ_t = Diag(α_t) Ṽ_{t-1} + (1 - α_t) v_tᵀ      Ṽ [m, d_v]: the slots' values
    o_t = Ṽ_tᵀ softmax(K̃_t q_t),     y_t = W_o RMSNorm_h(o_t)

ABC's bounded memory (m slots, written with weights 1 - α_t, read by a softmax over the slots) with GLA's
data-dependent forgetting; the write weight is tied to the forget gate. Computed by ops/slot: the chunked
slot scores, the softmax, then gated linear attention (ops/linear) with the slots as its key dimension
(the paper's "two-layer GLA linked via softmax"); impl="reference" runs the recurrence token by token.
x [B, T, d_model]; H heads of d_k = expand_k · d_model / H, d_v = expand_v · d_model / H; m = n_slots (the
paper: 64). State: both slot memories, keys [B, H, m, d_k] and values [B, H, m, d_v] (float32). Padded
steps get log α = 0 (so 1 - α = 0) and k = v = 0: the memories are left untouched.

Left out: the rest of the paper's model (its MLP blocks: an attnzoo LanguageModel adds its own), any
short convolution or output gate (none is in the equations above), and the T2R setting (finetuning a
pretrained Transformer into GSA). The scores carry no 1/sqrt(d_k), as the paper's o_t = Ṽ_tᵀ softmax(K̃_t q_t)
(`scale` multiplies them). Defaults: m = 64 slots and τ = 8 as in the paper; expand_k = expand_v = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import HeadNorm, mask_steps
from attnzoo.mixers.base import Mixer, MixerState
from attnzoo.ops.slot import gated_slot_attention
from attnzoo.registry import Card, Paper, register


@dataclass
class SlotState(MixerState):
    """Gated slot attention's memories: keys K̃ [B, H, m, d_k] and values Ṽ [B, H, m, d_v], float32."""

    keys: torch.Tensor
    values: torch.Tensor


def _head_dim(width: float, n_heads: int, what: str) -> int:
    w = int(width)
    if w != width or w <= 0 or w % n_heads:
        raise ValueError(f"{what} width {width} must be a positive int divisible by n_heads={n_heads}")
    return w // n_heads


def gsa_state_bytes(d_model: int, n_heads: int, seq_len: int, n_slots: int = 64, expand_k: float = 1.0,
                    expand_v: float = 1.0) -> int:
    """Two fp32 slot memories per head, [m, d_k] and [m, d_v]: 4 m (H d_k + H d_v) bytes, whatever T."""
    return 4 * n_slots * (int(d_model * expand_k) + int(d_model * expand_v))


@register(
    "gsa",
    card=Card(
        title="Gated slot attention (m slot memories with per-slot forget gates, read by a softmax over slots)",
        paper=Paper("Gated Slot Attention for Efficient Linear-Time Sequence Modeling", "Zhang et al.", 2024,
                    "2409.07146"),
        family="linear",
        complexity="O(T d m)",
        state_bytes=gsa_state_bytes,
        example_kwargs={"n_heads": 2, "n_slots": 16},
        claim="ABC's bounded slot memory with GLA-style data-dependent forgetting (two GLA passes joined by a "
              "softmax) does better where in-context recall is needed, at a compact recurrent state, and in "
              "finetuning pretrained Transformers to RNNs (T2R).",
    ),
)
class GatedSlotAttention(Mixer):
    state_class = SlotState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, n_slots: int = 64, expand_k: float = 1.0, expand_v: float = 1.0,
        gate_tau: float = 8.0, scale: float = 1.0, impl: str = "auto",
    ):
        super().__init__(d_model)
        if isinstance(n_heads, bool) or not isinstance(n_heads, int) or n_heads <= 0:
            raise ValueError(f"n_heads must be a positive int, got {n_heads!r}")
        if isinstance(n_slots, bool) or not isinstance(n_slots, int) or n_slots <= 0:
            raise ValueError(f"n_slots must be a positive int, got {n_slots!r}")
        if not gate_tau > 0:
            raise ValueError(f"gate_tau must be positive, got {gate_tau}")
        self.n_heads, self.n_slots = n_heads, n_slots
        self.key_dim = _head_dim(d_model * expand_k, n_heads, "key (d_model * expand_k)")
        self.value_dim = _head_dim(d_model * expand_v, n_heads, "value (d_model * expand_v)")
        self.gate_tau, self.scale, self.impl = float(gate_tau), float(scale), impl
        hk, hv = n_heads * self.key_dim, n_heads * self.value_dim
        self.q_proj = nn.Linear(d_model, hk, bias=False)
        self.k_proj = nn.Linear(d_model, hk, bias=False)
        self.v_proj = nn.Linear(d_model, hv, bias=False)
        self.f_proj = nn.Linear(d_model, n_heads * n_slots, bias=False)
        self.o_norm = HeadNorm(n_heads, self.value_dim, kind="rms")
        self.o_proj = nn.Linear(hv, d_model, bias=False)

    def check_state(self, state):
        H, M = self.n_heads, self.n_slots
        for name, d in (("keys", self.key_dim), ("values", self.value_dim)):
            t = getattr(state, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape[1:]) != (H, M, d):
                got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                raise ValueError(f"state.{name} must be [B, {H}, {M}, {d}] (heads, slots, dim), got {got}")

    def log_gate(self, x):
        """log α [B, T, H, m] = logsigmoid(x W_α) / τ, i.e. α = sigmoid(x W_α)^{1/τ}."""
        B, T, _ = x.shape
        return (F.logsigmoid(self.f_proj(x)) / self.gate_tau).view(B, T, self.n_heads, self.n_slots)

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, dk, dv = self.n_heads, self.key_dim, self.value_dim
        q = F.silu(self.q_proj(x)).view(B, T, H, dk)
        k = mask_steps(F.silu(self.k_proj(x)).view(B, T, H, dk), mask)
        v = mask_steps(F.silu(self.v_proj(x)).view(B, T, H, dv), mask)
        g = mask_steps(self.log_gate(x), mask)
        o, mem = gated_slot_attention(q, k, v, g, scale=self.scale,
                                      initial_state=None if state is None else (state.keys, state.values),
                                      output_final_state=return_state, impl=self.impl)
        y = self.o_proj(self.o_norm(o.to(x.dtype)).reshape(B, T, H * dv))
        return y, (SlotState(keys=mem[0], values=mem[1]) if return_state else None)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, n_slots={self.n_slots}, key_dim={self.key_dim}, "
                f"value_dim={self.value_dim}, gate_tau={self.gate_tau}")
