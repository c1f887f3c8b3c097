"""Routing attention pieces (Routing Transformer, Roy, Saffar, Vaswani, Grangier 2021, arXiv:2003.05997):
nearest-centroid assignment, the online (EMA) k-means update, and balanced cluster attention.

Distance to a centroid is -x·μ on layer-normed x, so the nearest centroid is argmax_c x·μ_c.
Online k-means (training only, no gradients), per head h and cluster c, with decay λ:
    n_c ← λ n_c + (1-λ) |{x : a(x) = c}|,      s_c ← λ s_c + (1-λ) Σ_{a(x)=c} x
    μ_c = s_c / ñ_c,   ñ_c = (n_c + ε) / (Σ n + C ε) · Σ n      (Laplace smoothing, ε = 1e-5)
"""

from __future__ import annotations

import torch


def nearest_centroid(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D], mu [H, C, D] -> cluster ids [B, T, H] (argmax_c x·μ_c)."""
    return torch.einsum("bthd,hcd->bthc", x, mu.to(x.dtype)).argmax(-1)


@torch.no_grad()
def kmeans_ema_update(sums, counts, centroids, x, ids, weight, *, decay: float, eps: float = 1e-5):
    """In-place EMA k-means step. sums/centroids [H, C, D], counts [H, C]; x [B, T, H, D],
    ids [B, T, H] (assignments), weight [B, T] (1 for real tokens, 0 for padding)."""
    _H, C, _D = centroids.shape
    onehot = torch.nn.functional.one_hot(ids, C).to(sums.dtype) * weight[..., None, None].to(sums.dtype)
    batch_counts = onehot.sum((0, 1))  # [H, C]
    batch_sums = torch.einsum("bthc,bthd->hcd", onehot, x.to(sums.dtype))
    counts.mul_(decay).add_(batch_counts, alpha=1 - decay)
    sums.mul_(decay).add_(batch_sums, alpha=1 - decay)
    total = counts.sum(-1, keepdim=True)
    smoothed = (counts + eps) / (total + C * eps) * total
    centroids.copy_(sums / smoothed[..., None])


def commitment_loss(x, mu, ids, weight):
    """mean over real tokens and heads of ||x - sg(μ_{a(x)})||²; x [B,T,H,D], ids [B,T,H], weight [B,T]."""
    H = x.shape[2]
    m = mu.detach().to(x.dtype)[torch.arange(H, device=x.device)[None, None, :], ids]  # [B, T, H, D]
    d = (x - m).pow(2).sum(-1).mean(-1)  # [B, T]
    return (d * weight.to(d.dtype)).sum() / weight.sum().clamp_min(1)


def balanced_members(x, mu, real, w: int):
    """Each centroid takes its top-w nearest real tokens (Routing Transformer's balanced clusters).

    x [B, T, H, D], mu [H, C, D], real [B, T] -> idx [B, H, C, w] (sorted by position), ok [B, H, C, w].
    """
    _B, T = real.shape
    w = min(w, T)
    s = torch.einsum("bthd,hcd->bhct", x, mu.to(x.dtype))
    s = s.masked_fill(~real[:, None, None, :], float("-inf"))
    vals, idx = torch.topk(s, w, dim=-1)
    ok = vals > float("-inf")
    idx, order = torch.sort(torch.where(ok, idx, torch.full_like(idx, T)), dim=-1)
    ok = torch.gather(ok, -1, order)
    return idx.clamp_max(T - 1), ok


def balanced_cluster_attention(q, k, v, q_idx, q_ok, k_idx, k_ok, *, scale=None):
    """Attention inside each cluster, results averaged over the clusters a query belongs to.

    q/k/v [B, T, H, D]; *_idx/*_ok [B, H, C, w] from balanced_members. Returns o [B, T, H, D]
    (exact mean over the query's clusters; zero for a token in no cluster) and the count [B, T, H].
    """
    B, T, H, D = q.shape
    C, w = q_idx.shape[2], q_idx.shape[3]
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = D**-0.5 if scale is None else scale

    def take(t, idx):  # t [B, T, H, D], idx [B, H, C, w] -> [B, H, C, w, D]
        tt = t.permute(0, 2, 1, 3).to(ct)  # [B, H, T, D]
        flat = idx.reshape(B, H, C * idx.shape[-1], 1).expand(-1, -1, -1, t.shape[-1])
        return torch.gather(tt, 2, flat).view(B, H, C, idx.shape[-1], t.shape[-1])

    qc, kc, vc = take(q, q_idx), take(k, k_idx), take(v, k_idx)
    s = torch.einsum("bhcid,bhcjd->bhcij", qc, kc) * scale
    s = s.masked_fill(~k_ok[:, :, :, None, :], float("-inf"))
    seen = k_ok.any(-1)[..., None, None]
    p = torch.softmax(torch.where(seen, s, torch.zeros_like(s)), -1) * seen.to(ct)
    oc = torch.einsum("bhcij,bhcjd->bhcid", p, vc) * q_ok[..., None].to(ct)  # [B, H, C, w, Dv]
    Dv = v.shape[-1]
    out = torch.zeros(B, H, T, Dv, dtype=ct, device=q.device)
    flat = q_idx.reshape(B, H, C * w)
    out = out.scatter_add(2, flat[..., None].expand(-1, -1, -1, Dv), oc.reshape(B, H, C * w, Dv))
    cnt = torch.zeros(B, H, T, dtype=ct, device=q.device).scatter_add(2, flat, q_ok.reshape(B, H, C * w).to(ct))
    o = out / cnt.clamp_min(1)[..., None]
    return o.permute(0, 2, 1, 3).to(q.dtype), cnt.permute(0, 2, 1)


def balanced_cluster_attention_reference(q, k, v, q_idx, q_ok, k_idx, k_ok, *, scale=None):
    """Same as balanced_cluster_attention, one cluster at a time through dense masked attention."""
    from attnzoo.ops.softmax.reference import softmax_attention_reference

    B, T, H, D = q.shape
    C = q_idx.shape[2]
    scale = D**-0.5 if scale is None else scale

    def members(idx, ok):  # -> bool [B, H, C, T]
        m = torch.zeros(B, H, C, T + 1, dtype=torch.bool, device=q.device)
        return m.scatter(-1, torch.where(ok, idx, torch.full_like(idx, T)), True)[..., :T]

    q_in, k_in = members(q_idx, q_ok), members(k_idx, k_ok)
    fold = lambda t: t.permute(0, 2, 1, 3).reshape(B * H, T, 1, t.shape[-1])
    acc = 0
    for c in range(C):
        allowed = (q_in[:, :, c, :, None] & k_in[:, :, c, None, :]).reshape(B * H, T, T)
        o_c = softmax_attention_reference(fold(q), fold(k), fold(v), allowed=allowed, scale=scale)
        acc = acc + o_c.view(B, H, T, -1) * q_in[:, :, c, :, None].to(o_c.dtype)
    cnt = q_in.sum(2)  # [B, H, T]
    o = acc / cnt.clamp_min(1)[..., None].to(acc.dtype)
    return o.permute(0, 2, 1, 3), cnt.permute(0, 2, 1)
