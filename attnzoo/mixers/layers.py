"""Small building blocks shared by mixers: RMSNorm, gated RMSNorm, rotary embeddings, KV caches, a Linear for
narrow widths."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.ops.common.dispatch import op_override
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.norm import gated_rms_norm, rms_norm
from attnzoo.ops.norm.api import ACTIVATIONS


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight (weight optional: elementwise_affine=False gives SRMSNorm)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(RMSNorm):
    """RMSNorm(x) * act(gate), per head (Mamba-2 / Gated DeltaNet output norm): ops.norm.gated_rms_norm
    (fused on CUDA when NORM_TRITON_AUTO is on)."""

    def __init__(self, dim: int, eps: float = 1e-6, activation: str = "silu"):
        super().__init__(dim, eps)
        if activation not in ACTIVATIONS:
            raise KeyError(activation)
        self.activation = activation

    def forward(self, x, gate):
        return gated_rms_norm(x, self.weight, gate, self.eps, self.activation)


# AlignedLinear's padding: "off", "cuda" (CUDA inputs only) or "always" (the CPU tests). Off until a GPU timing:
# the zoo's group-step profile (H100, 2026-12-08, benchmarks/results/zoo_throughput/) spent 1.3-1.4 ms of a 9.5-12.7
# ms step in a cuBLAS GEMM for 2- or 4-wide projections (align2 tiles), which padded widths would avoid.
NARROW = {"pad": "off"}


class AlignedLinear(nn.Linear):
    """nn.Linear for narrow projections (a per-head gate or step size: 1-4 outputs; a low-rank bottleneck):
    with NARROW["pad"] on, the product runs with in and out features zero-padded to multiples of 8 and the padded
    outputs sliced off, so cuBLAS sees aligned widths; outputs and gradients are those of nn.Linear (the padding
    adds zeros only). Its parameters and state_dict are nn.Linear's."""

    def forward(self, x):
        mode = NARROW["pad"]
        if mode == "off" or (mode == "cuda" and not x.is_cuda):
            return super().forward(x)
        po, pi = -self.out_features % 8, -self.in_features % 8
        if not (po or pi):
            return super().forward(x)
        w = F.pad(self.weight, (0, pi, 0, po))
        b = None if self.bias is None else F.pad(self.bias, (0, po))
        y = F.linear(F.pad(x, (0, pi)) if pi else x, w, b)
        return y[..., : self.out_features] if po else y


def rope_frequencies(head_dim: int, theta: float = 10000.0, device=None) -> torch.Tensor:
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head_dim, got {head_dim}")
    return theta ** (-torch.arange(0, head_dim, 2, device=device, dtype=torch.float64) / head_dim)


def apply_rope(x: torch.Tensor, pos: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """Rotary position embedding (Su et al. 2021, arXiv:2104.09864), rotate-half convention.

    x [B, T, H, D], pos [B, T] integer positions. Angles are computed in float64 then cast.
    """
    cos, sin = rope_cos_sin(pos, x.shape[-1], theta, x.dtype)
    return rotate_half(x, cos[..., None, :], sin[..., None, :])


def rope_cos_sin(pos: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin of the RoPE angles, shape pos.shape + [head_dim/2], float64 for float64 else float32.

    Compute them once and gather rows for any subset of tokens (MoH's routed queries)."""
    ang = pos.to(torch.float64)[..., None] * rope_frequencies(head_dim, theta, pos.device)
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.cos(ang).to(ct), torch.sin(ang).to(ct)


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE, rotate-half convention: x [..., D] with cos/sin broadcastable to [..., D/2]."""
    D = x.shape[-1]
    xf = x.to(cos.dtype)
    x1, x2 = xf[..., : D // 2], xf[..., D // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def token_positions(mask: torch.Tensor | None, B: int, T: int, start: torch.Tensor | None, device):
    """Positions of the new tokens, counting real tokens only: [B, T] long.

    start [B] = number of real tokens already seen (from a state), or None for 0.
    A padded step gets the position of the last real token before it (it is never used as a key).
    """
    if mask is None:
        pos = torch.arange(T, device=device).expand(B, T)
    else:
        pos = mask.long().cumsum(1) - 1
        pos = pos.clamp_min(0)
    if start is not None:
        pos = pos + start[:, None]
    offset = op_override("token_positions")  # sequence parallel: real tokens on the earlier ranks
    if offset is not None:
        pos = pos + offset(mask, B, T, device)[:, None]
    return pos


def extend_kv_cache(state, k, v, real, mask):
    """A KV-cache mixer's keys for this call: (k_all, v_all, valid, padded). The cache's k/v/valid
    (state.k, state.v [B, L, H, D], state.valid [B, L]) come first, then this call's k, v and `real`
    [B, T] (state None: this call's alone). padded: the attention must take its masked path, because
    this call has padding (mask given) or the cache may hold some (under torch.compile it is assumed
    to, which gives the same outputs without reading the cache's mask on the host: a graph break)."""
    padded = mask is not None or (state is not None and (compiling() or not bool(state.valid.all())))
    if state is None:
        return k, v, real, padded
    return (torch.cat([state.k.to(k.dtype), k], 1), torch.cat([state.v.to(v.dtype), v], 1),
            torch.cat([state.valid, real], 1), padded)


def qkv_heads(mixer, x, n_kv_heads: int | None = None):
    """(q [B, T, H, hd], k, v [B, T, Hkv, hd]) from an attention mixer's q_proj / k_proj / v_proj
    (Hkv = n_kv_heads, default H), through its q_norm / k_norm when it has them (QK-norm)."""
    B, T, _ = x.shape
    H, hd = mixer.n_heads, mixer.head_dim
    Hkv = H if n_kv_heads is None else n_kv_heads
    q = mixer.q_proj(x).view(B, T, H, hd)
    k = mixer.k_proj(x).view(B, T, Hkv, hd)
    v = mixer.v_proj(x).view(B, T, Hkv, hd)
    if mixer.q_norm is not None:
        q, k = mixer.q_norm(q), mixer.k_norm(k)
    return q, k, v
