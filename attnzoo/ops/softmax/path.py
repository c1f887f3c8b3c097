"""PaTH attention (Yang, Shen, Wen, Tan, Mishra, Ren, Panda & Kim 2025, "PaTH Attention: Position Encoding via
Accumulating Householder Transformations", arXiv:2505.16381): softmax attention whose logits see the keys
through the product of the data-dependent Householder-like transitions between key and query.

    H_t = I - beta_t w_t w_tᵀ                                        (one per token and head)
    o_i = Σ_{j<=i} softmax_j( scale · q_iᵀ H_i H_{i-1} ··· H_{j+1} k_j + D_ij ) v_j      (empty product at j = i)

The newest transition stands next to the query (the paper's k_jᵀ (H_{j+1} ··· H_i) q_i, H_t symmetric).
D_ij = Σ_{l=j+1..i} log f_l is PaTH-FoX's forget gate on the logits (FoX's bias, `forgetting.py`; log_f None: D = 0).

Decoding view: a cache of keys already transformed up to the newest token (k~_j = H_t ··· H_{j+1} k_j);
each new token t updates every cached key, k~_j <- H_t k~_j (O(L d)), and its query reads them plainly.
Here the cached keys (`cache_k`, transformed up to the last cached token) come first, then the new tokens;
`output_keys=True` returns every key (cached and new) transformed up to the last new token: the next cache
(and, with log_f, every key's decay Σ log f after it up to the last new token: the next `cache_decay`).

The torch path is blockwise (the paper's compact representation of Householder products). For a block of
C tokens with rows w_s (W [C, D]) and betas beta:
    T = (I + diag(beta) tril(W Wᵀ, -1))^{-1} diag(beta)             so that H_C ··· H_1 = I - Wᵀ T W   (UT form)
    in-block logits   S = Q Kᵀ - tril(Q Wᵀ) T tril(W Kᵀ, -1)          (S_ij = q_iᵀ H_i ··· H_{j+1} k_j, j <= i)
    queries to the block start  Q^ = Q - tril(Q Wᵀ) T W               (rows q_iᵀ H_i ··· H_1)
    keys to the block end       K^ = K - tril(W Kᵀ, -1)ᵀ Tᵀ W         (rows (H_C ··· H_{j+1} k_j)ᵀ)
Earlier keys (the cache and the blocks before) are carried transformed up to the block start; a block's
queries read them as Q^ K~ᵀ, then they pass the whole block (K~ <- K~ - K~ Wᵀ Tᵀ W) and the block's K^
join them. O(T^2 d) work with no d x d matrix per pair; the T x T logits are materialised (as FoX's bias).

Layout [B, T, H, D] (no GQA). w [B, T, H, D] (the mixer makes it unit norm; beta in (0, 2) keeps every
H_t's norm <= 1), beta [B, T, H]. A padded token needs beta = 0 (H = I: it transforms nothing) and a
False key_mask entry (never a key). A query that sees no key gets zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.dispatch import resolve_impl
from attnzoo.ops.common.precision import compute_dtype


def check_path_inputs(q, k, v, w, beta, cache_k, cache_v, key_mask, chunk_size, log_f=None, cache_decay=None):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or w.dim() != 4:
        raise ValueError(f"q, k, v, w must be [B, T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}, {tuple(w.shape)}")
    B, T, H, D = q.shape
    if tuple(k.shape) != (B, T, H, D) or tuple(w.shape) != (B, T, H, D) or tuple(v.shape[:3]) != (B, T, H):
        raise ValueError(f"k and w must be {(B, T, H, D)} and v [B, T, H, Dv] like q; got {tuple(k.shape)}, "
                         f"{tuple(w.shape)}, {tuple(v.shape)}")
    if tuple(beta.shape) != (B, T, H):
        raise ValueError(f"beta must be [B, T, H] = {(B, T, H)}, got {tuple(beta.shape)}")
    if (cache_k is None) != (cache_v is None):
        raise ValueError("cache_k and cache_v come together (both None: no cache)")
    L = 0
    if cache_k is not None:
        L = cache_k.shape[1] if cache_k.dim() == 4 else -1
        if cache_k.dim() != 4 or tuple(cache_k.shape) != (B, L, H, D) or tuple(cache_v.shape) != (B, L, H, v.shape[3]):
            raise ValueError(f"cache_k must be [B, L, {H}, {D}] and cache_v [B, L, {H}, {v.shape[3]}]; got "
                             f"{tuple(cache_k.shape)}, {tuple(cache_v.shape)}")
    if key_mask is not None and (key_mask.dtype != torch.bool or tuple(key_mask.shape) != (B, L + T)):
        raise ValueError(f"key_mask must be bool [B, L + T] = {(B, L + T)} (cached keys first), got "
                         f"{key_mask.dtype} {tuple(key_mask.shape)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if log_f is None and cache_decay is not None:
        raise ValueError("cache_decay needs log_f (the forget gate of the new tokens)")
    if log_f is not None:
        if tuple(log_f.shape) != (B, T, H):
            raise ValueError(f"log_f must be [B, T, H] = {(B, T, H)}, got {tuple(log_f.shape)}")
        if L and (cache_decay is None or tuple(cache_decay.shape) != (B, L, H)):
            got = None if cache_decay is None else tuple(cache_decay.shape)
            raise ValueError(f"cache_decay must be [B, {L}, {H}] for {L} cached keys with a forget gate, got {got}")
    return L


def _softmax_read(scores, v_all, L, key_mask, out_dtype):
    """Masked causal softmax of scores [B, H, T, L + T] (new query i sees the cache and new keys <= i)
    times v_all [B, L + T, H, Dv]; a query that sees no key gets zeros."""
    B, H, T, Tk = scores.shape
    dev = scores.device
    allowed = torch.arange(Tk, device=dev)[None, :] <= torch.arange(T, device=dev)[:, None] + L
    allowed = allowed.expand(B, T, Tk)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, :]
    seen = allowed.any(-1, keepdim=True)[:, None]                           # [B, 1, T, 1]
    allowed = allowed[:, None] | ~seen                  # a blind row attends anywhere, then is zeroed
    scores = torch.where(allowed, scores, torch.full((), float("-inf"), dtype=scores.dtype, device=dev))
    probs = torch.softmax(scores, -1) * seen.to(scores.dtype)
    return torch.einsum("bhij,bjhd->bihd", probs, v_all.to(scores.dtype)).to(out_dtype)


def path_attention_reference(q, k, v, w, beta, *, log_f=None, cache_decay=None, cache_k=None, cache_v=None,
                             key_mask=None, scale=None, output_keys=False, chunk_size=32):
    """The definition in float64: every transition H_t = I - beta_t w_t w_tᵀ as a D x D matrix, and for each
    query i the product H_i ··· H_{j+1} built key by key (j = i, i-1, ..., 0, then the cache), the forget
    gate's D_ij summed term by term alongside. Small T only. Same arguments and returns as `path_attention`
    (chunk_size is ignored)."""
    L = check_path_inputs(q, k, v, w, beta, cache_k, cache_v, key_mask, chunk_size, log_f, cache_decay)
    f = torch.float64
    B, T, H, D = q.shape
    scale = D**-0.5 if scale is None else scale
    qf, kf, wf, bf = (t.to(f).transpose(1, 2) for t in (q, k, w, beta))    # [B, H, T, ...]
    eye = torch.eye(D, dtype=f, device=q.device)
    Hs = eye - bf[..., None, None] * wf[..., :, None] * wf[..., None, :]      # [B, H, T, D, D]
    ck = None if cache_k is None else cache_k.to(f).transpose(1, 2)          # [B, H, L, D]
    lf = torch.zeros(B, H, T, dtype=f, device=q.device) if log_f is None else log_f.to(f).transpose(1, 2)
    scores = torch.zeros(B, H, T, L + T, dtype=f, device=q.device)
    bias = torch.zeros(B, H, T, L + T, dtype=f, device=q.device)
    for i in range(T):
        P = eye.expand(B, H, D, D)                                           # H_i ··· H_{j+1}
        d = torch.zeros(B, H, dtype=f, device=q.device)                      # Σ_{l=j+1..i} log f_l
        for j in range(i, -1, -1):
            scores[:, :, i, L + j] = torch.einsum("bhd,bhde,bhe->bh", qf[:, :, i], P, kf[:, :, j])
            bias[:, :, i, L + j] = d
            P = P @ Hs[:, :, j]
            d = d + lf[:, :, j]
        if L:
            scores[:, :, i, :L] = torch.einsum("bhd,bhde,bhle->bhl", qf[:, :, i], P, ck)
            if cache_decay is not None:
                bias[:, :, i, :L] = d[..., None] + cache_decay.to(f).transpose(1, 2)
    v_all = v if cache_v is None else torch.cat([cache_v.to(v.dtype), v], 1)
    o = _softmax_read(scores * scale + bias, v_all, L, key_mask, q.dtype)
    if not output_keys:
        return o, None, None
    decay = None
    if log_f is not None:                                                    # Σ of log f after each key
        after = torch.stack([lf[:, :, j + 1:].sum(-1) for j in range(T)], 2)
        decay = after if not L else torch.cat([cache_decay.to(f).transpose(1, 2) + lf.sum(-1, keepdim=True), after], 2)
        decay = decay.transpose(1, 2).to(compute_dtype(q))
    new = torch.zeros(B, H, T, D, dtype=f, device=q.device)
    P = eye.expand(B, H, D, D)                                               # H_{T-1} ··· H_{j+1}
    for j in range(T - 1, -1, -1):
        new[:, :, j] = torch.einsum("bhde,bhe->bhd", P, kf[:, :, j])
        P = P @ Hs[:, :, j]
    keys = new if ck is None else torch.cat([torch.einsum("bhde,bhle->bhld", P, ck), new], 2)
    return o, keys.transpose(1, 2).to(compute_dtype(q)), decay


def _block_pieces(qb, kb, wb, bb):
    """Per block (all [B, H, N, C, ...]): the UT matrix T and the in-block logits, Q^ and K^ (module docstring)."""
    C = qb.shape[-2]
    eye = torch.eye(C, dtype=qb.dtype, device=qb.device)
    A = eye + bb[..., :, None] * torch.tril(wb @ wb.transpose(-1, -2), -1)
    Tm = torch.linalg.solve_triangular(A, torch.diag_embed(bb), upper=False, unitriangular=True)
    qw = torch.tril(qb @ wb.transpose(-1, -2)) @ Tm                          # [.., C(i), C(s)]
    wk = torch.tril(wb @ kb.transpose(-1, -2), -1)                           # [.., C(s), C(j)]
    S = qb @ kb.transpose(-1, -2) - qw @ wk
    q_hat = qb - qw @ wb
    k_hat = kb - wk.transpose(-1, -2) @ (Tm.transpose(-1, -2) @ wb)
    return Tm, S, q_hat, k_hat


def path_attention_torch(q, k, v, w, beta, *, log_f=None, cache_decay=None, cache_k=None, cache_v=None,
                         key_mask=None, scale=None, output_keys=False, chunk_size=32):
    """Blockwise (UT form) in float32 (float64 for float64 inputs); see the module docstring."""
    ct = compute_dtype(q)
    B, T, H, D = q.shape
    L = 0 if cache_k is None else cache_k.shape[1]
    scale = D**-0.5 if scale is None else scale
    C = min(chunk_size, T)
    N = -(-T // C)
    pad = N * C - T

    def blocks(t):                                                            # [B, T, H, ...] -> [B, H, N, C, ...]
        t = t.to(ct).transpose(1, 2)
        t = F.pad(t, (0, 0, 0, pad)) if t.dim() == 4 else F.pad(t, (0, pad))
        return t.reshape(B, H, N, C, *t.shape[3:])

    qb, kb, wb, bb = blocks(q), blocks(k), blocks(w), blocks(beta)
    Tm, S, q_hat, k_hat = _block_pieces(qb, kb, wb, bb)
    carried = None if cache_k is None else cache_k.to(ct).transpose(1, 2)    # earlier keys, up to the block start
    rows = []
    for n in range(N):
        parts = [] if carried is None else [q_hat[:, :, n] @ carried.transpose(-1, -2)]
        parts.append(S[:, :, n])
        row = torch.cat(parts, -1)
        rows.append(F.pad(row, (0, L + N * C - row.shape[-1])))
        if carried is not None:                                              # pass the whole block n
            wn = wb[:, :, n]
            carried = carried - (carried @ wn.transpose(-1, -2)) @ (Tm[:, :, n].transpose(-1, -2) @ wn)
        carried = k_hat[:, :, n] if carried is None else torch.cat([carried, k_hat[:, :, n]], 2)
    scores = torch.cat(rows, 2)[:, :, :T, : L + T] * scale
    decay = None
    if log_f is not None:                                                    # FoX: D_ij = c_i - c_j
        c = torch.cumsum(log_f.to(ct), 1)                                    # [B, T, H]
        key_c = c if not L else torch.cat([-cache_decay.to(ct), c], 1)
        scores = scores + (c.permute(0, 2, 1)[..., :, None] - key_c.permute(0, 2, 1)[..., None, :])
        decay = (c[:, -1:] - key_c) if output_keys else None
    v_all = v if cache_v is None else torch.cat([cache_v.to(v.dtype), v], 1)
    o = _softmax_read(scores, v_all, L, key_mask, q.dtype)
    keys = carried[:, :, : L + T].transpose(1, 2) if output_keys else None
    return o, keys, decay


def path_attention(q, k, v, w, beta, *, log_f=None, cache_decay=None, cache_k=None, cache_v=None, key_mask=None,
                   scale=None, output_keys=False, chunk_size=32, impl="auto"):
    """PaTH attention: softmax over q_iᵀ H_i ··· H_{j+1} k_j, H_t = I - beta_t w_t w_tᵀ (module docstring).

    Args:
        q, k, w: [B, T, H, D]; v: [B, T, H, Dv] (the new tokens). beta: [B, T, H] (0 at padded tokens).
        log_f: [B, T, H] log forget gates (<= 0; 0 at padded tokens) for PaTH-FoX, or None (no gate).
        cache_decay: [B, L, H] per cached key, Σ log f after it up to the last cached token (with log_f and a cache).
        cache_k: [B, L, H, D] keys of earlier tokens already transformed up to the last of them (the state),
            cache_v: [B, L, H, Dv]; both None: no cache.
        key_mask: bool [B, L + T] (cached keys first; False: padding, never seen) or None.
        scale: None means D ** -0.5. output_keys: also return every key transformed up to the last new token.
        chunk_size: block length of the torch path. impl: "auto" | "reference" | "torch".
    Returns:
        (o [B, T, H, Dv] in q's dtype, keys [B, L + T, H, D] float32 (float64 for float64 inputs) or None,
        decay [B, L + T, H] (same dtype; output_keys with log_f) or None).

    Example:
        >>> q, k, v = torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8), torch.randn(2, 9, 2, 8)
        >>> w = torch.nn.functional.normalize(torch.randn(2, 9, 2, 8), dim=-1)
        >>> beta = 2 * torch.sigmoid(torch.randn(2, 9, 2))
        >>> o, _, _ = path_attention(q, k, v, w, beta, chunk_size=4)
        >>> torch.allclose(o, path_attention(q, k, v, w, beta, impl="reference")[0], atol=1e-5)
        True
    """
    check_path_inputs(q, k, v, w, beta, cache_k, cache_v, key_mask, chunk_size, log_f, cache_decay)
    impl = resolve_impl(impl, q)
    kw = {"log_f": log_f, "cache_decay": cache_decay, "cache_k": cache_k, "cache_v": cache_v, "key_mask": key_mask,
          "scale": scale, "output_keys": output_keys, "chunk_size": chunk_size}
    if impl == "reference":
        return path_attention_reference(q, k, v, w, beta, **kw)
    if impl == "torch":
        return path_attention_torch(q, k, v, w, beta, **kw)
    raise ValueError('path_attention has no Triton kernel yet; use impl="torch" or "reference"')
