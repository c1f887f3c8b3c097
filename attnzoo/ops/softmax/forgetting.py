"""Forgetting attention (FoX; Lin et al. 2025, "Forgetting Transformer: Softmax Attention with a Forget
Gate", arXiv:2503.02130): softmax attention whose logits carry the cumulative log forget gate.

    o_i = Σ_{j<=i} softmax_j( scale · q_i·k_j + D_ij ) v_j,      D_ij = Σ_{l=j+1..i} log f_l      (D_ii = 0)

with f_l in (0, 1] the forget gate of token l (one scalar per head). With c_i = Σ_{l<=i} log f_l,
D_ij = c_i - c_j, so the bias is a difference of cumulative sums (the torch path: SDPA with that bias
as a float attn_mask). With a KV cache the cached keys come first: for a cached key j the caller keeps
`cache_decay_j` = Σ of log f over the tokens after j up to the last cached token (<= 0), so that for
a new query i, D_ij = cache_decay_j + c_i with c counted over the new tokens only. The decays stay
relative to the newest token (never an ever-growing cumulative sum), which keeps them exact in float32.

Layout [B, T, H, D] (no GQA). key_mask [B, Tk] bool: False keys (padding) are never seen; a padded
token should also get log f = 0 so that it forgets nothing. A query that sees no key gets zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.checks import check_cached_qkv
from attnzoo.ops.common.dispatch import resolve_impl
from attnzoo.ops.common.precision import compute_dtype


def check_forgetting_inputs(q, k, v, log_f, cache_decay, key_mask):
    B, Tq, Tk, H = check_cached_qkv(q, k, v, key_mask)
    if tuple(log_f.shape) != (B, Tq, H):
        raise ValueError(f"log_f must be [B, Tq, H] = {(B, Tq, H)}, got {tuple(log_f.shape)}")
    n_cached = Tk - Tq
    if n_cached and (cache_decay is None or tuple(cache_decay.shape) != (B, n_cached, H)):
        got = None if cache_decay is None else tuple(cache_decay.shape)
        raise ValueError(f"cache_decay must be [B, {n_cached}, {H}] for {n_cached} cached keys, got {got}")


def _allowed(B, Tq, Tk, key_mask, device):
    """[B, Tq, Tk]: new query i sees every cached key and the new keys up to itself."""
    n_cached = Tk - Tq
    allowed = (torch.arange(Tk, device=device)[None, :] <= torch.arange(Tq, device=device)[:, None] + n_cached)
    allowed = allowed.expand(B, Tq, Tk)
    return allowed if key_mask is None else allowed & key_mask[:, None, :]


def forgetting_attention_reference(q, k, v, log_f, *, cache_decay=None, key_mask=None, scale=None,
                                   output_decay=False):
    """The definition, term by term: D_ij as an explicit sum of log f over l in (j, i] (an indicator
    tensor [Tq, Tk, Tq], small T only), then a masked softmax, in float32 (float64 for float64 inputs).
    Same arguments and returns as `forgetting_attention`."""
    check_forgetting_inputs(q, k, v, log_f, cache_decay, key_mask)
    ct = compute_dtype(q)
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    n_cached = Tk - Tq
    scale = D**-0.5 if scale is None else scale
    lf = log_f.to(ct)
    dev = q.device
    i = torch.arange(Tq, device=dev)[:, None, None]            # query (new token) index
    j = torch.arange(Tk, device=dev)[None, :, None] - n_cached  # key index among the new tokens (< 0: cached)
    ell = torch.arange(Tq, device=dev)[None, None, :]           # the token whose gate is summed
    between = ((ell > j) & (ell <= i)).to(ct)       # [Tq, Tk, Tq]: l in (j, i]
    D_ij = torch.einsum("ijl,blh->bhij", between, lf)
    if n_cached:
        cached = torch.zeros(B, H, Tq, Tk, dtype=ct, device=dev)
        cached[..., :n_cached] = cache_decay.to(ct).permute(0, 2, 1)[:, :, None, :]
        D_ij = D_ij + cached
    scores = torch.einsum("bihd,bjhd->bhij", q.to(ct), k.to(ct)) * scale + D_ij
    allowed = _allowed(B, Tq, Tk, key_mask, q.device)[:, None]
    seen = allowed.any(-1, keepdim=True)
    scores = torch.where(allowed, scores, torch.full((), float("-inf"), dtype=ct, device=dev))
    probs = torch.softmax(torch.where(seen, scores, torch.zeros((), dtype=ct, device=dev)), -1) * seen.to(ct)
    o = torch.einsum("bhij,bjhd->bihd", probs, v.to(ct)).to(q.dtype)
    if not output_decay:
        return o, None
    after = (torch.arange(Tq, device=dev)[None, :] > (torch.arange(Tk, device=dev)[:, None] - n_cached)).to(ct)
    decay = torch.einsum("jl,blh->bjh", after, lf)
    if n_cached:
        decay[:, :n_cached] = decay[:, :n_cached] + cache_decay.to(ct)
    return o, decay


def forgetting_attention_torch(q, k, v, log_f, *, cache_decay=None, key_mask=None, scale=None, output_decay=False):
    """D_ij = c_i - c_j from one cumulative sum, given to SDPA as a float attn_mask (float32 compute for
    16-bit inputs; float64 for float64)."""
    ct = compute_dtype(q)
    B, Tq, H, D = q.shape
    Tk = k.shape[1]
    scale = D**-0.5 if scale is None else scale
    c = torch.cumsum(log_f.to(ct), 1)                                     # [B, Tq, H]
    key_c = c if Tk == Tq else torch.cat([-cache_decay.to(ct), c], 1)     # [B, Tk, H]: D_ij = c_i - key_c_j
    bias = c.permute(0, 2, 1)[..., :, None] - key_c.permute(0, 2, 1)[..., None, :]   # [B, H, Tq, Tk]
    allowed = _allowed(B, Tq, Tk, key_mask, q.device)
    seen = allowed.any(-1, keepdim=True)                                  # [B, Tq, 1]
    allowed = allowed | ~seen                                             # such a row attends anywhere, then is zeroed
    bias = torch.where(allowed[:, None], bias, torch.full((), float("-inf"), dtype=ct, device=q.device))
    qh, kh, vh = (t.to(ct).transpose(1, 2) for t in (q, k, v))
    o = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias, scale=scale).transpose(1, 2)
    o = torch.where(seen[..., None], o, o.new_zeros(())).to(q.dtype)
    decay = (c[:, -1:] - key_c) if output_decay else None
    return o, decay


def forgetting_attention(q, k, v, log_f, *, cache_decay=None, key_mask=None, scale=None, output_decay=False,
                         impl="auto"):
    """Softmax attention with a forget gate on the logits (FoX; the module docstring has the formula).

    Args:
        q: [B, Tq, H, D] (the newest Tq tokens). k: [B, Tk, H, D], v: [B, Tk, H, Dv], Tk = n_cached + Tq,
            the cached keys first. log_f: [B, Tq, H] log forget gates (<= 0) of the new tokens.
        cache_decay: [B, n_cached, H] (<= 0) per cached key, the sum of log f after it (None: no cache).
        key_mask: bool [B, Tk] (False: padding, never seen) or None. scale: None means D ** -0.5.
        output_decay: also return every key's decay relative to the last new token (the next cache_decay).
        impl: "auto" | "reference" | "torch".
    Returns:
        (o [B, Tq, H, Dv] in q's dtype, decay [B, Tk, H] float32 (float64) or None).

    Example:
        >>> q, k, v = torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)
        >>> log_f = torch.nn.functional.logsigmoid(torch.randn(2, 9, 2) + 2)
        >>> o, _ = forgetting_attention(q, k, v, log_f)
        >>> torch.allclose(o, forgetting_attention(q, k, v, log_f, impl="reference")[0], atol=1e-5)
        True
    """
    check_forgetting_inputs(q, k, v, log_f, cache_decay, key_mask)
    impl = resolve_impl(impl, q)
    kw = {"cache_decay": cache_decay, "key_mask": key_mask, "scale": scale, "output_decay": output_decay}
    if impl == "reference":
        return forgetting_attention_reference(q, k, v, log_f, **kw)
    if impl == "torch":
        return forgetting_attention_torch(q, k, v, log_f, **kw)
    raise ValueError('forgetting_attention has no Triton kernel yet; use impl="torch" or "reference"')
