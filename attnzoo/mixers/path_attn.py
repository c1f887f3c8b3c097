"""PaTH attention (Yang, Shen, Wen, Tan, Mishra, Ren, Panda & Kim 2025, "PaTH Attention: Position Encoding via
Accumulating Householder Transformations", arXiv:2505.16381, NeurIPS 2025).

    w_t = normalize(ShortConv_3(x W_w))_h,   beta_t = 2 sigmoid(x_t w_beta + b_beta)_h  in (0, 2)
    H_t = I - beta_t w_t w_tᵀ                                       (per head: a data-dependent Householder-like map)
    o_i = Σ_{j<=i} softmax_j( q_iᵀ H_i ··· H_{j+1} k_j / sqrt(d) ) v_j,     y = W_o concat_h o
    PaTH-FoX (forget_gate=True): + Σ_{l=j+1..i} log f_l in the logit, f_t = sigmoid(x_t w_f + b_f) per head (FoX)

The accumulated transitions replace RoPE (no other position encoding): order and content both shape how
a key looks from a later query; beta in (0, 2) lets H_t have a negative eigenvalue (1 - beta), what the
paper's state-tracking results rest on. The op is `attnzoo.ops.softmax.path` (a float64 reference that
materialises every product, and the blockwise UT-form torch path). Decoding keeps a cache of the keys
transformed up to the newest token (`PathKVState.k`, float32; float64 for a float64 mixer): each new token
applies its H_t to every cached key (O(L d) per step, like reading a KV cache), plus the short conv's cache
(and with the forget gate each key's decay relative to the newest token, as FoX's state). Padded steps get
beta = 0 (H = I) and log f = 0 and are never keys.

Left out of the paper: the FlashAttention-style kernel (the torch path materialises the T x T logits), and the
paper's training recipe and initialisation.
The paper's low-rank w projection is an option (`w_rank`; default a full d_model x H·d projection).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import l2_normalize, mask_steps
from attnzoo.mixers.base import Mixer, MixerState, check_heads
from attnzoo.mixers.layers import RMSNorm, qkv_heads
from attnzoo.mixers.short_conv import ShortConv
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.softmax.path import path_attention
from attnzoo.registry import Card, Paper, register


@dataclass
class PathKVState(MixerState):
    """k [B, L, H, D]: the cached keys transformed up to the newest token (float32; float64 for a float64
    mixer); v [B, L, H, D]; valid [B, L] bool (False: padding); conv [B, W-1, H·D]: the short conv's cache of
    w's inputs; decay [B, L, H] (forget_gate only, else None): Σ log f after each key up to the newest token."""

    k: torch.Tensor
    v: torch.Tensor
    valid: torch.Tensor
    conv: torch.Tensor
    decay: torch.Tensor | None = None


def path_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None,
                     conv_kernel: int = 3, forget_gate: bool = False) -> int:
    """Per cached token: fp32 transformed K and V [H, head_dim], a bool `valid` (a KV cache, growing with T) and,
    with the forget gate, an fp32 decay per head; plus the fixed short-conv cache (conv_kernel - 1) x H·head_dim
    fp32."""
    hd = d_model // n_heads if head_dim is None else head_dim
    per_token = 2 * n_heads * hd * 4 + 1 + (4 * n_heads if forget_gate else 0)
    return seq_len * per_token + (conv_kernel - 1) * n_heads * hd * 4


PATH = Paper("PaTH Attention: Position Encoding via Accumulating Householder Transformations",
             "Yang, Shen, Wen, Tan, Mishra, Ren, Panda & Kim", 2025, "2505.16381")


@register(
    "path_attn",
    card=Card(
        title="PaTH attention (softmax attention through accumulated data-dependent Householder transitions; "
              "no RoPE; optional FoX forget gate: PaTH-FoX)",
        paper=PATH,
        family="softmax",
        complexity="O(T^2 d); decode O(L d) per token (every cached key is updated)",
        state_bytes=path_state_bytes,
        example_kwargs={"n_heads": 2, "chunk_size": 16},
        claim="A data-dependent position encoding (products of Householder-like transitions between key and "
              "query) in place of RoPE's fixed rotations improves on RoPE and other recent baselines on synthetic "
              "benchmarks and moderate-scale language modelling; pretrained RoPE models convert to it.",
    ),
)
class PathAttention(Mixer):
    state_class = PathKVState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, w_rank: int | None = None,
        conv_kernel: int = 3, forget_gate: bool = False, qk_norm: bool = False, bias: bool = False,
        chunk_size: int = 32, impl: str = "auto",
    ):
        super().__init__(d_model)
        self.n_heads = n_heads
        self.head_dim = check_heads(d_model, n_heads, head_dim)
        if w_rank is not None and (isinstance(w_rank, bool) or not isinstance(w_rank, int) or w_rank < 1):
            raise ValueError(f"w_rank must be None or a positive int, got {w_rank!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.w_rank = w_rank
        self.chunk_size = chunk_size
        self.impl = impl
        width = n_heads * self.head_dim
        self.q_proj = nn.Linear(d_model, width, bias=bias)
        self.k_proj = nn.Linear(d_model, width, bias=bias)
        self.v_proj = nn.Linear(d_model, width, bias=bias)
        if w_rank is None:
            self.w_proj = nn.Linear(d_model, width, bias=False)
        else:
            self.w_proj = nn.Sequential(nn.Linear(d_model, w_rank, bias=False), nn.Linear(w_rank, width, bias=False))
        self.w_conv = ShortConv(width, kernel_size=conv_kernel)
        self.b_proj = nn.Linear(d_model, n_heads, bias=True)
        self.f_proj = nn.Linear(d_model, n_heads, bias=True) if forget_gate else None   # PaTH-FoX's w_f, b_f
        self.o_proj = nn.Linear(width, d_model, bias=bias)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else None

    def check_state(self, state: PathKVState):
        want = (self.n_heads, self.head_dim)
        if tuple(state.k.shape[2:]) != want or tuple(state.v.shape[2:]) != want:
            raise ValueError(f"PaTH cache must hold k, v [B, L, {want[0]}, {want[1]}], got {tuple(state.k.shape)} "
                             f"and {tuple(state.v.shape)}")
        self.w_conv.check_cache(state.conv, state.k.shape[0])
        if (state.decay is None) != (self.f_proj is None) or (
                state.decay is not None and tuple(state.decay.shape) != (*state.k.shape[:2], self.n_heads)):
            want = f"decay [B, L, {self.n_heads}]" if self.f_proj is not None else "no decay (no forget gate)"
            got = None if state.decay is None else tuple(state.decay.shape)
            raise ValueError(f"PaTH cache must hold {want}, got {got}")

    def transitions(self, x, mask=None, conv_cache=None, output_cache=False):
        """(w [B, T, H, D] unit norm, beta [B, T, H] in (0, 2), conv cache): H_t = I - beta_t w_t w_tᵀ; both 0
        at padded steps (H = I)."""
        B, T, _ = x.shape
        w, conv_cache = self.w_conv(self.w_proj(x), mask=mask, cache=conv_cache, output_cache=output_cache)
        w = mask_steps(l2_normalize(w.view(B, T, self.n_heads, self.head_dim)), mask)
        beta = mask_steps(2.0 * torch.sigmoid(self.b_proj(x)), mask)
        return w, beta, conv_cache

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        H, hd = self.n_heads, self.head_dim
        q, k, v = qkv_heads(self, x)
        w, beta, conv = self.transitions(x, mask, None if state is None else state.conv, return_state)
        real = torch.ones(B, T, dtype=torch.bool, device=x.device) if mask is None else mask
        valid = real if state is None else torch.cat([state.valid, real], 1)
        # the masked path when this call has padding or the cache may hold some (assumed under compile: no host read)
        padded = mask is not None or (state is not None and (compiling() or not bool(state.valid.all())))
        log_f = None if self.f_proj is None else mask_steps(F.logsigmoid(self.f_proj(x)), mask)
        o, keys, decay = path_attention(
            q, k, v, w, beta, log_f=log_f, cache_decay=None if state is None else state.decay,
            cache_k=None if state is None else state.k, cache_v=None if state is None else state.v,
            key_mask=valid if padded else None, output_keys=return_state, chunk_size=self.chunk_size, impl=self.impl)
        y = self.o_proj(o.reshape(B, T, H * hd))
        if not return_state:
            return y, None
        v_all = v if state is None else torch.cat([state.v.to(v.dtype), v], 1)
        return y, PathKVState(k=keys, v=v_all, valid=valid, conv=conv, decay=decay)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_heads={self.n_heads}, head_dim={self.head_dim}, w_rank={self.w_rank}, "
                f"conv_kernel={self.w_conv.kernel_size}, forget_gate={self.f_proj is not None}, "
                f"qk_norm={self.q_norm is not None}, "
                f"chunk_size={self.chunk_size}")
