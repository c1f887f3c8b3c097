"""Stick-breaking attention (Tan, Shen, Yang, Courville & Panda 2024, "Scaling Stick-Breaking Attention: An
Efficient Implementation and In-depth Study", arXiv:2410.17980, ICLR 2025).

    z_ij = scale · q_i·k_j,   beta_ij = sigmoid(z_ij)
    A_ij = beta_ij · Π_{j<k<i} (1 - beta_ik)            for keys j < i (the tokens before the current)
    o_i = Σ_j A_ij v_j                                   (no normalisation: Σ_j A_ij <= 1)

Each query breaks a stick starting from its most recent key: key i-1 takes the share beta, the next one
back takes beta of what remains, and so on. attend_current=True also lets the query see its own key
first (j <= i, product over j < k <= i). In log space, the torch path:
    log A_ij = logsigmoid(z_ij) + Σ_{k > j, k seen} logsigmoid(-z_ik)      (a suffix sum over the keys)
Layout [B, T, H, D] (no GQA). With a KV cache the cached keys come first (Tk = n_cached + Tq) and the
queries are the last Tq tokens. key_mask [B, Tk] bool: False keys (padding) are never seen and break no
stick. A query that sees no key gets zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.checks import check_cached_qkv
from attnzoo.ops.common.dispatch import resolve_impl


def _seen(B, Tq, Tk, key_mask, attend_current, device):
    """[B, 1, Tq, Tk]: new query i sees the keys before it (and itself when attend_current)."""
    n_cached = Tk - Tq
    kj = torch.arange(Tk, device=device)[None, :]
    qi = torch.arange(Tq, device=device)[:, None] + n_cached
    seen = (kj <= qi) if attend_current else (kj < qi)
    seen = seen.expand(B, Tq, Tk)
    return (seen if key_mask is None else seen & key_mask[:, None, :])[:, None]


def _logits(q, k, scale, ct):
    return torch.einsum("bihd,bjhd->bhij", q.to(ct), k.to(ct)) * scale


def stickbreaking_attention_reference(q, k, v, *, key_mask=None, scale=None, attend_current=False):
    """The definition: the product Π (1 - beta_ik) over the seen keys between j and i, taken explicitly
    over a [B, H, Tq, Tk, Tk] tensor (small T only), in float32 (float64 for float64 inputs)."""
    check_cached_qkv(q, k, v, key_mask)
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    scale = D**-0.5 if scale is None else scale
    beta = torch.sigmoid(_logits(q, k, scale, ct))                      # [B, H, Tq, Tk]
    seen = _seen(B, Tq, Tk, key_mask, attend_current, q.device)         # [B, 1, Tq, Tk]
    later = torch.arange(Tk, device=q.device)[None, :] > torch.arange(Tk, device=q.device)[:, None]   # [j, k]: k > j
    breaks = seen[..., None, :] & later                                # [B, 1, Tq, Tj, Tk]
    keep = torch.where(breaks, 1.0 - beta[..., None, :], torch.ones((), dtype=ct, device=q.device))
    A = torch.where(seen, beta * keep.prod(-1), torch.zeros((), dtype=ct, device=q.device))
    return torch.einsum("bhij,bjhd->bihd", A, v.to(ct)).to(q.dtype)


def stickbreaking_attention_torch(q, k, v, *, key_mask=None, scale=None, attend_current=False):
    """Log space: logsigmoid(z_ij) plus the suffix sum of logsigmoid(-z_ik) over the seen keys k > j (a
    flipped cumsum, shifted by one so that nothing is subtracted), then exp; float32 for 16-bit inputs."""
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    scale = D**-0.5 if scale is None else scale
    z = _logits(q, k, scale, ct)
    seen = _seen(B, Tq, Tk, key_mask, attend_current, q.device)
    zero = torch.zeros((), dtype=ct, device=q.device)
    log_rest = torch.where(seen, F.logsigmoid(-z), zero)               # log(1 - beta) of the seen keys
    suffix = torch.flip(torch.cumsum(torch.flip(log_rest, (-1,)), -1), (-1,))   # Σ_{k >= j}
    after = torch.cat([suffix[..., 1:], torch.zeros_like(suffix[..., :1])], -1)   # Σ_{k > j}
    A = torch.where(seen, torch.exp(F.logsigmoid(z) + after), zero)
    return torch.einsum("bhij,bjhd->bihd", A, v.to(ct)).to(q.dtype)


def stickbreaking_attention(q, k, v, *, key_mask=None, scale=None, attend_current=False, impl="auto"):
    """Stick-breaking attention (the module docstring has the formula).

    Args:
        q: [B, Tq, H, D] (the newest Tq tokens). k: [B, Tk, H, D], v: [B, Tk, H, Dv] (cached keys first).
        key_mask: bool [B, Tk] or None. scale: None means D ** -0.5.
        attend_current: a query also sees its own key (j <= i) instead of only the tokens before it.
        impl: "auto" | "reference" | "torch".
    Returns:
        o [B, Tq, H, Dv] in q's dtype.

    Example:
        >>> q, k, v = torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)
        >>> o = stickbreaking_attention(q, k, v)
        >>> torch.allclose(o, stickbreaking_attention(q, k, v, impl="reference"), atol=1e-5), float(o[0, 0].abs().max())
        (True, 0.0)
    """
    check_cached_qkv(q, k, v, key_mask)
    impl = resolve_impl(impl, q)
    kw = {"key_mask": key_mask, "scale": scale, "attend_current": attend_current}
    if impl == "reference":
        return stickbreaking_attention_reference(q, k, v, **kw)
    if impl == "torch":
        return stickbreaking_attention_torch(q, k, v, **kw)
    raise ValueError('stickbreaking_attention has no Triton kernel yet; use impl="torch" or "reference"')
