"""Attention mass on the prefix (source) per generation step: "attention degeneration".

Fu et al. (2023), arXiv:2304.04052, observe that in a decoder-only LM used for seq2seq the share
of attention that target position t puts on the source prefix shrinks as t grows. For softmax
probabilities p [B, H, Tq, Tk] and a prefix of P key positions:

    mass[t] = mean_{b, h} Σ_{j < P} p[b, h, t, j]

`attention_probs` recomputes a softmax mixer's self-attention probabilities with the reference
op (return_probs=True); `prefix_mass_per_step` reports mass[t] for the target steps t = P..T-1.
"""

from __future__ import annotations

import torch

from attnzoo.mixers.softmax import SoftmaxAttention
from attnzoo.ops.softmax import softmax_attention


def prefix_mass(probs: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """probs [B, H, Tq, Tk] -> [Tq]: attention mass on keys 0..prefix_len-1, averaged over batch and heads."""
    if probs.dim() != 4:
        raise ValueError(f"probs must be [B, H, Tq, Tk], got shape {tuple(probs.shape)}")
    if not 0 <= prefix_len <= probs.shape[-1]:
        raise ValueError(f"prefix_len must be in [0, Tk={probs.shape[-1]}], got {prefix_len}")
    return probs[..., :prefix_len].sum(-1).mean((0, 1))


@torch.no_grad()
def attention_probs(mixer: SoftmaxAttention, x: torch.Tensor, *, prefix_len: int | None = None) -> torch.Tensor:
    """Self-attention probabilities [B, H, T, T] of a softmax mixer on x [B, T, d_model] (no padding).

    The mask is the mixer's own: causal, plus bidirectional over `prefix_len` tokens when given
    (default: the mixer's prefix_len attribute if it has one, else none).
    """
    if not isinstance(mixer, SoftmaxAttention):
        raise ValueError(f"mixer must be a softmax attention mixer (SoftmaxAttention), got {type(mixer).__name__}")  # noqa: TRY004
    mixer.check_input(x, None, None)
    B, T, _ = x.shape
    if prefix_len is None:
        prefix_len = getattr(mixer, "prefix_len", 0) or None
    q, _ = mixer.split_q(mixer.q_proj(x))
    k = mixer.k_proj(x).view(B, T, mixer.n_kv_heads, mixer.head_dim)
    v = mixer.v_proj(x).view(B, T, mixer.n_kv_heads, mixer.head_dim)
    if mixer.q_norm is not None:
        q, k = mixer.q_norm(q), mixer.k_norm(k)
    if mixer.rope:
        from attnzoo.mixers.layers import apply_rope

        pos = torch.arange(T, device=x.device).expand(B, T)
        q, k = apply_rope(q, pos, mixer.rope_theta), apply_rope(k, pos, mixer.rope_theta)
    causal = mixer.causal or prefix_len is not None
    _, probs = softmax_attention(
        q, k, v, causal=causal, window=mixer.window, prefix_len=prefix_len, return_probs=True, impl="reference",
    )
    return probs


def prefix_mass_per_step(mixer: SoftmaxAttention, x: torch.Tensor, *, prefix_len: int) -> torch.Tensor:
    """[T - prefix_len]: attention mass on the prefix at each generation step t = P..T-1."""
    T = x.shape[1] if isinstance(x, torch.Tensor) and x.dim() == 3 else -1
    if not 0 < prefix_len < T:
        raise ValueError(f"prefix_len must be in [1, T-1] = [1, {T - 1}], got {prefix_len}")
    probs = attention_probs(mixer, x)  # the mixer's own mask
    return prefix_mass(probs, prefix_len)[prefix_len:]
