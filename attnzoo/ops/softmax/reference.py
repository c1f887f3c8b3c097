"""Reference softmax attention: explicit scores in float32 (float64 if the inputs are)."""

from __future__ import annotations

import torch


def expand_kv(x: torch.Tensor, n_q_heads: int) -> torch.Tensor:
    """[B, T, Hkv, D] -> [B, T, Hq, D] by repeating each kv head for its query group (GQA)."""
    g = n_q_heads // x.shape[2]
    return x if g == 1 else x.repeat_interleave(g, dim=2)


def softmax_attention_reference(q, k, v, *, allowed, scale, return_probs=False):
    """o_i = sum_j softmax_j(scale * q_i . k_j | allowed) v_j, per head; zero for a query that sees nothing.

    q [B,Tq,Hq,D], k [B,Tk,Hkv,D], v [B,Tk,Hkv,Dv], allowed bool [B,Tq,Tk] or None.
    """
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    Hq = q.shape[2]
    qf, kf, vf = q.to(ct), expand_kv(k, Hq).to(ct), expand_kv(v, Hq).to(ct)
    scores = torch.einsum("bihd,bjhd->bhij", qf, kf) * scale
    if allowed is not None:
        a = allowed[:, None]
        scores = scores.masked_fill(~a, float("-inf"))
        seen = a.any(-1, keepdim=True)
        scores = torch.where(seen, scores, torch.zeros_like(scores))
    probs = torch.softmax(scores, dim=-1)
    if allowed is not None:
        probs = probs * seen.to(ct)
    o = torch.einsum("bhij,bjhd->bihd", probs, vf).to(q.dtype)
    return (o, probs) if return_probs else o
