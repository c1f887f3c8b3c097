"""softmax_attention: one entry point, masks built from token positions.

Which key a query sees is decided from positions (so that KV-cache decoding, padding and
windows share one rule):
- key_mask [B, Tk] bool: False keys are never seen (padding);
- causal: k_pos <= q_pos;
- window w: q_pos - k_pos < w (the query sees itself and the w-1 keys before it);
- prefix_len (int or [B]): keys with k_pos < prefix_len are seen by every query
  (prefix-LM: bidirectional over the prefix, causal after).
Default positions: k_pos = 0..Tk-1 and q_pos = Tk-Tq..Tk-1 (queries are the newest tokens).
A query that sees no key gets a zero output. A causal window with the default positions and no
key mask runs in query blocks over a band of keys (banded.py: O(T·w), no T x T mask).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.dispatch import op_override, resolve_impl
from attnzoo.ops.softmax.banded import banded_window_attention, use_banded
from attnzoo.ops.softmax.reference import softmax_attention_reference
from attnzoo.ops.softmax.sdpa import softmax_attention_sdpa


def _positions(pos, B, T, default_start, device):
    if pos is None:
        return torch.arange(default_start, default_start + T, device=device).expand(B, T)
    pos = torch.as_tensor(pos, device=device)
    if pos.dim() == 1:
        pos = pos.expand(B, T)
    if tuple(pos.shape) != (B, T):
        raise ValueError(f"positions must have shape [{T}] or [{B}, {T}], got {tuple(pos.shape)}")
    return pos


def attention_allowed(
    B: int, Tq: int, Tk: int, *, device, causal=False, window=None, prefix_len=None,
    q_pos=None, k_pos=None, key_mask=None,
):
    """Bool [B, Tq, Tk]: True where query i may attend to key j. None means everything is allowed.

    Example:
        >>> attention_allowed(1, 3, 3, device="cpu", causal=True, window=2)[0].int()
        tensor([[1, 0, 0],
                [1, 1, 0],
                [0, 1, 1]], dtype=torch.int32)
    """
    if not (causal or window or prefix_len is not None or key_mask is not None):
        return None
    qp = _positions(q_pos, B, Tq, Tk - Tq, device)
    kp = _positions(k_pos, B, Tk, 0, device)
    rel = qp[:, :, None] - kp[:, None, :]  # [B, Tq, Tk]
    allowed = torch.ones(B, Tq, Tk, dtype=torch.bool, device=device)
    if causal:
        allowed &= rel >= 0
    if window is not None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        allowed &= rel < window
    if prefix_len is not None:
        pl = torch.as_tensor(prefix_len, device=device).reshape(-1, 1, 1)
        allowed |= kp[:, None, :] < pl
    if key_mask is not None:
        if tuple(key_mask.shape) != (B, Tk) or key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask must be bool [B, Tk] = [{B}, {Tk}], "
                             f"got {key_mask.dtype} {tuple(key_mask.shape)}")
        allowed &= key_mask[:, None, :]
    return allowed


def check_qkv(q, k, v):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            f"q, k, v must be [B, T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    B, _, Hq, D = q.shape
    if k.shape[0] != B or v.shape[0] != B or k.shape[:3] != v.shape[:3] or k.shape[-1] != D:
        raise ValueError(f"k [B,Tk,Hkv,{D}] and v [B,Tk,Hkv,Dv] must match q; got {tuple(k.shape)}, {tuple(v.shape)}")
    if Hq % k.shape[2]:
        raise ValueError(f"query heads ({Hq}) must be a multiple of key/value heads ({k.shape[2]}) for GQA")


def softmax_attention(
    q, k, v, *, causal=False, window=None, prefix_len=None, q_pos=None, k_pos=None, key_mask=None,
    scale=None, return_probs=False, impl="auto",
):
    """Multi-head softmax attention with GQA (Vaswani et al. 2017, arXiv:1706.03762).

        o_i = Σ_j softmax_j(scale · q_i · k_j | key j allowed) v_j      (zero for a query that sees no key)

    Args:
        q: [B, Tq, Hq, D]. k: [B, Tk, Hkv, D]. v: [B, Tk, Hkv, Dv] (Hq a multiple of Hkv: GQA).
        causal, window, prefix_len, q_pos, k_pos, key_mask: which keys a query sees (module docstring).
        scale: None means D ** -0.5. return_probs: also return p [B, Hq, Tq, Tk] (impl="reference").
        impl: "auto" | "reference" | "torch" (SDPA).
    Returns:
        o [B, Tq, Hq, Dv] in q's dtype, or (o, p) with return_probs.

    The op keeps no state: a KV cache is the keys and values a mixer keeps (q_pos / k_pos place the
    newest queries after them).

    Example:
        >>> q, k, v = torch.randn(2, 10, 4, 8), torch.randn(2, 10, 2, 8), torch.randn(2, 10, 2, 8)
        >>> o = softmax_attention(q, k, v, causal=True)
        >>> o.shape
        torch.Size([2, 10, 4, 8])
        >>> o_ref, p = softmax_attention(q, k, v, causal=True, impl="reference", return_probs=True)
        >>> torch.allclose(o, o_ref, atol=1e-5), float(p[0, 0, 0, 1])  # the first query sees only itself
        (True, 0.0)
    """
    check_qkv(q, k, v)
    override = op_override("softmax_attention")  # e.g. attnzoo.parallel.sequence_parallel
    if override is not None:
        return override(q, k, v, causal=causal, window=window, prefix_len=prefix_len, q_pos=q_pos, k_pos=k_pos,
                        key_mask=key_mask, scale=scale, return_probs=return_probs, impl=impl)
    B, Tq, _, D = q.shape
    Tk = k.shape[1]
    scale = D**-0.5 if scale is None else scale
    impl = resolve_impl(impl, q)
    if return_probs and impl != "reference":
        raise ValueError('return_probs=True needs impl="reference" (SDPA does not expose the probabilities)')
    if (impl != "reference" and causal and window is not None and prefix_len is None and key_mask is None
            and q_pos is None and k_pos is None and use_banded(Tq, Tk, window)):
        return banded_window_attention(q, k, v, window=window, scale=scale)  # O(T·w), not a T x T mask
    simple_causal = (
        causal and window is None and prefix_len is None and key_mask is None
        and q_pos is None and k_pos is None and Tq == Tk
    )
    allowed = None if simple_causal else attention_allowed(
        B, Tq, Tk, device=q.device, causal=causal, window=window, prefix_len=prefix_len,
        q_pos=q_pos, k_pos=k_pos, key_mask=key_mask,
    )
    if impl == "reference":
        if simple_causal:
            allowed = attention_allowed(B, Tq, Tk, device=q.device, causal=True)
        return softmax_attention_reference(q, k, v, allowed=allowed, scale=scale, return_probs=return_probs)
    return softmax_attention_sdpa(q, k, v, allowed=allowed, is_causal=simple_causal, scale=scale)
