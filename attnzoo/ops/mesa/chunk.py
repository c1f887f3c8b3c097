"""The mesa layer on torch: H_t x as a chunked gated linear attention, (H_t + Λ)^{-1} q_t by conjugate
gradients, then o_t = G_tᵀ q*_t by the chunked GLA op (ops/linear). Plain autograd (the CG loop is
unrolled: the gradient is that of the k-step solve actually computed).

    q*_t = CG_k(H_t + diag(λ), q_t),   o_t = G_tᵀ q*_t            (reference.py has the recurrences)

T is cut into chunks of C tokens (the last zero-padded: a step with g = 0, β = 0, k = 0 leaves H as it
is). With b_i = Σ_{j<=i} g_j inside a chunk and H_0 the state entering it, every CG step needs

    (H_i + Λ) p_i = e^{b_i} H_0 p_i + Σ_{j<=i} e^{b_i − b_j} β_j k_j (k_jᵀ p_i) + λ ⊙ p_i

for all tokens at once: three batched products per step over all chunks ([C, K] x [K, K] for the
entering state, [C, K] x [K, C] and [C, C] x [C, K] inside the chunk). The entering states H_0 are
computed once (a loop over T / C chunks). All exponents are sums of log gates <= 0.

CG starts from x = 0 and runs cg_steps steps; a token whose residual has fallen to
|r|² <= eps² |q|² (eps of the compute dtype) stops there (its steps become no-ops), so that the
unrolled gradient never divides tiny residuals by each other. H_t + Λ is symmetric positive definite
(λ > 0), so for cg_steps >= K the result is the exact solve up to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.precision import compute_dtype


def _chunks(x, N: int, C: int, ct):
    """[B, T, H, ...] -> [B, H, N, C, ...] in ct, zero-padded along T (differentiable)."""
    B, T, H = x.shape[:3]
    x = x.to(ct).transpose(1, 2)
    if N * C > T:
        pad = [0, 0] * (x.dim() - 3) + [0, N * C - T]
        x = F.pad(x, pad)
    return x.reshape(B, H, N, C, *x.shape[3:])


def _unchunk(x, T: int):
    """[B, H, N, C, K] -> [B, T, H, K]."""
    B, H, N, C, K = x.shape
    return x.reshape(B, H, N * C, K)[:, :, :T].transpose(1, 2)


def conjugate_gradient(matvec, b, steps: int):
    """x ≈ A^{-1} b for a symmetric positive definite A given as matvec, per vector over the last dim:
    `steps` CG steps from x = 0, each vector stopping once |r|² <= eps² |b|² (its alpha is 0 from then
    on, so x and r stay as they are; p may change but is never used again)."""
    eps = torch.finfo(b.dtype).eps
    x = torch.zeros_like(b)
    r, p = b, b
    rs = torch.linalg.vecdot(r, r)[..., None]
    floor = rs * eps**2
    one, zero = torch.ones((), dtype=b.dtype, device=b.device), torch.zeros((), dtype=b.dtype, device=b.device)
    for _ in range(steps):
        active = rs > floor
        Ap = matvec(p)
        pAp = torch.linalg.vecdot(p, Ap)[..., None]
        alpha = torch.where(active, rs / torch.where(active, pAp, one), zero)
        x = torch.addcmul(x, alpha, p)
        r = torch.addcmul(r, alpha, Ap, value=-1)
        rs_new = torch.linalg.vecdot(r, r)[..., None]
        p = torch.addcmul(r, torch.where(active, rs_new / torch.where(active, rs, one), zero), p)
        rs = torch.where(active, rs_new, rs)
    return x


def chunk_mesa_solve(q, k, beta, g, lam, H0=None, *, cg_steps: int, chunk_size: int = 16):
    """(q*, H_T): q*_t ≈ (H_t + diag(λ))^{-1} q_t [B, T, H, K] in the compute dtype, and the final H
    [B, H, K, K]. q, k [B, T, H, K]; beta, g [B, T, H]; lam [H, K]; H0 [B, H, K, K] or None."""
    B, T, H, K = q.shape
    ct = compute_dtype(q, k, beta, g, lam, H0)
    C = min(chunk_size, T)
    N = -(-T // C)
    qc, kc = _chunks(q, N, C, ct), _chunks(k, N, C, ct)
    bc = _chunks(beta[..., None], N, C, ct)[..., 0]  # [B, H, N, C]
    gc = torch.zeros_like(bc) if g is None else _chunks(g[..., None], N, C, ct)[..., 0]
    b = gc.cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    diff = torch.where(causal, b[..., :, None] - b[..., None, :], torch.zeros((), dtype=ct, device=q.device))
    W = torch.where(causal, diff.exp(), torch.zeros((), dtype=ct, device=q.device)) * bc[..., None, :]
    eb = b.exp()[..., None]  # [B, H, N, C, 1]
    ea = (b[..., -1:] - b).exp() * bc  # e^{b_C − b_j} β_j
    H_local = (kc * ea[..., None]).transpose(-1, -2) @ kc  # [B, H, N, K, K]
    decay = b[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]
    if H0 is None:
        Hs = torch.zeros(B, H, K, K, dtype=ct, device=q.device)
    else:  # CG assumes a symmetric matrix: only H0's symmetric part is used (as by the reference)
        Hs = 0.5 * (H0.to(ct) + H0.to(ct).transpose(-1, -2))
    enter = []
    for n in range(N):
        enter.append(Hs)
        Hs = decay[:, :, n] * Hs + H_local[:, :, n]
    H_enter = torch.stack(enter, 2)  # [B, H, N, K, K]
    reg = lam.to(ct)[None, :, None, None, :]
    kT = kc.transpose(-1, -2).contiguous()

    def matvec(p):  # (H_t + Λ) p_t for every token (H_enter is symmetric: p @ H_enter = (H_enter p)ᵀ)
        return torch.addcmul(torch.addcmul(((p @ kT) * W) @ kc, eb, p @ H_enter), reg, p)

    x = conjugate_gradient(matvec, qc, cg_steps)
    return _unchunk(x, T), Hs
