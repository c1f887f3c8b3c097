"""Softmax attention through torch.nn.functional.scaled_dot_product_attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.softmax.reference import expand_kv


def softmax_attention_sdpa(q, k, v, *, allowed, is_causal, scale):
    """Same contract as the reference (allowed bool [B,Tq,Tk] or None; zero rows that see nothing)."""
    Hq = q.shape[2]
    qh = q.transpose(1, 2)
    kh = expand_kv(k, Hq).transpose(1, 2)
    vh = expand_kv(v, Hq).transpose(1, 2)
    if allowed is None:
        o = F.scaled_dot_product_attention(qh, kh, vh, is_causal=is_causal, scale=scale)
        return o.transpose(1, 2)
    seen = allowed.any(-1, keepdim=True)  # [B, Tq, 1]
    safe = allowed | ~seen  # a row that sees nothing attends everywhere, then is zeroed
    o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=safe[:, None], scale=scale)
    o = o.transpose(1, 2)
    return torch.where(seen[..., None], o, o.new_zeros(()))
