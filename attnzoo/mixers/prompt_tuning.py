"""Prompt (prefix) tuning for softmax attention, exact and approximated (APT).

Exact prompt tuning, in its key/value (prefix-tuning) form: Li & Liang (2021), "Prefix-Tuning",
arXiv:2101.00190; soft prompts: Lester, Al-Rfou, Constant (2021), arXiv:2104.08691.
Approximated prompt tuning: Wu, Huang, Zhou, Dai, Shu, Jiang, Ji (2023), "Approximated Prompt
Tuning for Vision-Language Pre-trained Models", arXiv:2306.15706.

x [B, T, d_model] -> y [B, T, d_model]. n_prompts learned keys P_k and values P_v [n, Hkv, D] are
prepended to every attention call (position-free: every query sees them, causal or not).

Exact (mode="exact"): o_i = softmax([s q_i·K ; s q_i·P_k]) [V ; P_v]. With the normalisers
Z_x,i = Σ_{j visible} exp(s q_i·k_j) and Z_p,i = Σ_m exp(s q_i·p_m) this is exactly

    o_i = (1 - λ_i) o_x,i + λ_i o_p,i,     λ_i = Z_p,i / (Z_x,i + Z_p,i)                 (1)

where o_x is the attention over the tokens alone and o_p,i = softmax_m(s q_i·p_m) P_v is a prompt
term that involves token i only. λ_i, the prompt's share of the normaliser, is what couples the
prompt term to the whole sequence (Z_x needs the global attention).

APT (mode="apt"), as implemented here: keep the token attention o_x unchanged and add the prompt
term computed per token independently, with its share taken against a learned per-head constant
exp(c_h) instead of the sequence's own normaliser Z_x:

    o_i = o_x,i + λ̂_i o_p,i,   λ̂_i = Z_p,i / (Z_p,i + exp(c_h)) = σ(logsumexp_m(s q_i·p_m) − c_h)

This follows the paper's stated idea (the prompt's effect approximated by an independent
"information diffusion" step per token, avoiding global attention over the prompts); the paper's
exact parameterisation could not be checked here (only its abstract was available), so treat
this variant as APT-style, not a verified reproduction.

`prompt_parameters()` returns the prompt parameters (and c_h) for prompt-only training. Decoding
keeps the ordinary KV cache of the tokens; the prompts are added on every call.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.mixers.layers import apply_rope, token_positions
from attnzoo.mixers.softmax import KVCacheState, SoftmaxAttention, kv_cache_bytes
from attnzoo.ops.softmax import softmax_attention
from attnzoo.ops.softmax.reference import expand_kv
from attnzoo.registry import Card, Paper, register

WU_2023 = Paper("Approximated Prompt Tuning for Vision-Language Pre-trained Models", "Wu et al.", 2023, "2306.15706")
MODES = ("exact", "apt")


def prompt_term(q, prompt_k, prompt_v, scale):
    """Per-token prompt attention. q [B,T,H,D], prompt_k/v [n,Hkv,D] -> (o_p [B,T,H,D], lse_p [B,T,H])."""
    H = q.shape[2]
    pk, pv = expand_kv(prompt_k[None], H)[0], expand_kv(prompt_v[None], H)[0]  # [n, H, D]
    logits = torch.einsum("bthd,nhd->bthn", q, pk.to(q.dtype)) * scale
    return torch.einsum("bthn,nhd->bthd", logits.softmax(-1), pv.to(q.dtype)), logits.logsumexp(-1)


@register(
    "prompt_tuning",
    card=Card(
        title="Softmax attention with learned prompt keys/values (exact, or APT-style approximation)",
        paper=WU_2023,
        family="softmax",
        complexity="O(T^2 d + T n_prompts d)",
        state_bytes=kv_cache_bytes,  # the prompts are parameters, not per-sequence state
        causal=True,
        bidirectional=True,
        example_kwargs={"n_heads": 4, "n_kv_heads": 2, "n_prompts": 3},
    ),
)
class PromptTunedSoftmax(SoftmaxAttention):
    def __init__(
        self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None, head_dim: int | None = None,
        n_prompts: int = 8, mode: str = "exact", causal: bool = True, rope: bool = True,
        rope_theta: float = 10000.0, bias: bool = False, impl: str = "auto",
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(n_prompts, int) or n_prompts < 1:
            raise ValueError(f"n_prompts must be an int >= 1, got {n_prompts!r}")
        super().__init__(
            d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=causal, rope=rope,
            rope_theta=rope_theta, bias=bias, impl=impl,
        )
        self.mode, self.n_prompts = mode, n_prompts
        shape = (n_prompts, self.n_kv_heads, self.head_dim)
        self.prompt_k = nn.Parameter(torch.randn(shape) * self.head_dim**-0.5)
        self.prompt_v = nn.Parameter(torch.randn(shape) * self.head_dim**-0.5)
        self.apt_log_z = nn.Parameter(torch.zeros(n_heads)) if mode == "apt" else None

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.prompt_k, self.prompt_v, self.apt_log_z) if p is not None]

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        hd, H, Hkv = self.head_dim, self.n_heads, self.n_kv_heads
        q, _ = self.split_q(self.q_proj(x))
        k = self.k_proj(x).view(B, T, Hkv, hd)
        v = self.v_proj(x).view(B, T, Hkv, hd)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        pos = token_positions(mask, B, T, None if state is None else state.seen, x.device)
        if self.rope:
            q, k = apply_rope(q, pos, self.rope_theta), apply_rope(k, pos, self.rope_theta)
        if state is not None:
            k_all, v_all = torch.cat([state.k.to(k.dtype), k], 1), torch.cat([state.v.to(v.dtype), v], 1)
            valid, kpos = torch.cat([state.valid, real], 1), torch.cat([state.kpos, pos], 1)
        else:
            k_all, v_all, valid, kpos = k, v, real, pos
        scale = hd**-0.5
        if self.mode == "exact":
            n = self.n_prompts
            pk = self.prompt_k.to(k.dtype)[None].expand(B, n, Hkv, hd)
            pv = self.prompt_v.to(v.dtype)[None].expand(B, n, Hkv, hd)
            o = softmax_attention(
                q, torch.cat([pk, k_all], 1), torch.cat([pv, v_all], 1), causal=self.causal, q_pos=pos,
                k_pos=torch.cat([torch.full((B, n), -1, dtype=kpos.dtype, device=x.device), kpos], 1),
                key_mask=torch.cat([torch.ones(B, n, dtype=torch.bool, device=x.device), valid], 1),
                scale=scale, impl=self.impl,
            )
        else:
            padded = mask is not None or (state is not None and not bool(state.valid.all()))
            o_x = softmax_attention(
                q, k_all, v_all, causal=self.causal, q_pos=pos if padded else None,
                k_pos=kpos if padded else None, key_mask=valid if padded else None, scale=scale, impl=self.impl,
            )
            o_p, lse_p = prompt_term(q, self.prompt_k, self.prompt_v, scale)
            share = torch.sigmoid(lse_p - self.apt_log_z.to(lse_p.dtype))[..., None]
            o = o_x + share * o_p
        y = self.o_proj(o.reshape(B, T, H * hd))
        new_state = None
        if return_state:
            seen = real.long().sum(1) + (0 if state is None else state.seen)
            new_state = KVCacheState(k=k_all, v=v_all, valid=valid, kpos=kpos, seen=seen)
        return y, new_state


    def extra_repr(self):
        return super().extra_repr() + f", n_prompts={self.n_prompts}, mode={self.mode!r}"
