"""Sequence-parallel gated linear attention (ZeCO, arXiv:2507.01004, on the GLA recurrence
S_t = diag(exp(g_t + g_gamma)) S_{t-1} + k_t v_tᵀ, o_t = scale · q_tᵀ S_t).

On rank p, with b_t = Σ_{j<=t} (g_j + g_gamma) the cumulative log decay from the shard's first token
(a vector over K, or a scalar per head):

    A_p = diag(exp(b_L))                                   (the shard's decay, [B, H, K or 1, 1])
    B_p = Σ_t (k_t ⊙ exp(b_L - b_t)) v_tᵀ                 (its end state from zero: one matmul)
    M_t = scale · q_t ⊙ exp(b_t)                           (so that o_t = o_local_t + M_t S_in)

b_L - b_t is summed from the shard's end (an exclusive reverse cumsum) rather than taken as a
difference of cumsums, so every exponent is <= 0 and exact to rounding (CHUNKED.md §1). o_local is
the public op `attnzoo.ops.linear.gated_linear_attention` from a zero state: with overlap, computed
while the All-Scan of (A_p, B_p) runs (B_p then from the formula above); without, first, and B_p is
its final state.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype
from attnzoo.parallel.context import SPConfig
from attnzoo.parallel.scan_op import run_scan_op


def shard_log_decay(g, g_gamma, B: int, T: int, H: int, dtype):
    """Per-step log decay [B, T, H, K or 1] in `dtype` (None: no decay at all)."""
    ld = None
    if g is not None:
        ld = g.to(dtype)[..., None] if g.dim() == 3 else g.to(dtype)
    if g_gamma is not None:
        gam = g_gamma.to(dtype).view(1, 1, H, 1).expand(B, T, H, 1)
        ld = gam if ld is None else ld + gam
    return ld


def gla_decay_map(q, g=None, g_gamma=None, *, scale: float, dtype=None):
    """(A [B, H, K|1, 1] or None, M [B, T, H, K], the per-step log decay or None) of one shard."""
    ct = dtype or compute_dtype(q, g)
    B, T, H, _ = q.shape
    ld = shard_log_decay(g, g_gamma, B, T, H, ct)
    if ld is None:
        return None, scale * q.to(ct), None
    b = ld.cumsum(1)
    return torch.exp(b[:, -1])[..., None], scale * q.to(ct) * torch.exp(b), ld


def gla_shard_map(q, k, v, g=None, g_gamma=None, *, scale: float):
    """(A [B, H, K|1, 1] or None, B [B, H, K, V], M [B, T, H, K]) of one shard (module docstring)."""
    ct = compute_dtype(q, k, v, g)
    A, M, ld = gla_decay_map(q, g, g_gamma, scale=scale, dtype=ct)
    kf, vf = k.to(ct), v.to(ct)
    if ld is not None:
        suffix = ld.flip(1).cumsum(1).flip(1)  # Σ_{j >= t}
        rest = torch.cat([suffix[:, 1:], torch.zeros_like(suffix[:, :1])], 1)  # Σ_{j > t} = b_L - b_t
        kf = kf * torch.exp(rest)
    return A, torch.einsum("bthk,bthv->bhkv", kf, vf), M


class GLABody:
    dense = False
    overlap_pays = True  # the map before the local pass costs a few elementwise ops and one matmul
    name = "All-Scan (gated linear attention)"

    def __init__(self, scale: float, impl: str):
        self.scale, self.impl = scale, impl

    def prepare(self, q, k, v, g, g_gamma):
        return gla_shard_map(q, k, v, g, g_gamma, scale=self.scale)

    def _op(self, q, k, v, g, g_gamma, final_state):
        from attnzoo.ops.linear import gated_linear_attention

        return gated_linear_attention(q, k, v, g, g_gamma=g_gamma, scale=self.scale, impl=self.impl,
                                      output_final_state=final_state)

    def local(self, q, k, v, g, g_gamma):
        return self._op(q, k, v, g, g_gamma, False)[0]

    def fused(self, q, k, v, g, g_gamma):
        o, S = self._op(q, k, v, g, g_gamma, True)  # B is the op's own final state
        A, M, _ = gla_decay_map(q, g, g_gamma, scale=self.scale, dtype=S.dtype)
        return o, A, S, M


def sp_gated_linear_attention(cfg: SPConfig, q, k, v, g=None, *, g_gamma=None, scale, initial_state=None,
                              output_final_state=False, impl="auto"):
    """The override of `gated_linear_attention` (inputs already checked, scale resolved, normalize
    already turned into an extra value column). Returns (o, state at the end of this rank's shard)."""
    o, S = run_scan_op(GLABody(scale, impl), cfg, initial_state, (q, k, v, g, g_gamma))
    return o, (S if output_final_state else None)
