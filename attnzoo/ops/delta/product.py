"""DeltaProduct: n_h delta-rule (generalised Householder) steps per token, with an optional scalar gate.

    o, S = delta_product(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False,
                         impl="auto")

q [B, T, H, K]; k [B, T, H, n_h, K] (each key L2-normalised); v [B, T, H, n_h, V]; beta [B, T, H, n_h] (in (0, 1),
or (0, 2) to allow negative eigenvalues); g [B, T, H] log gate (<= 0) or None; state [B, H, K, V] float32
(float64 for float64 inputs). Siems et al. 2025, "DeltaProduct: Improving State-Tracking in Linear RNNs via
Householder Products", arXiv:2502.10297 (Gated DeltaProduct: the gate of Gated DeltaNet on top):

    S_t = α_t A_t S_{t-1} + B_t,   A_t = Π_{j=n_h..1} (I - β_{t,j} k_{t,j} k_{t,j}ᵀ),
    B_t = Σ_j Π_{l=n_h..j+1} (I - β_{t,l} k_{t,l} k_{t,l}ᵀ) β_{t,j} k_{t,j} v_{t,j}ᵀ,     o_t = scale · q_tᵀ S_t

i.e. n_h delta-rule steps per token, the gate α_t = exp(g_t) (a scalar, so it commutes with the A factors)
applied once. impl "reference": the product form above token by token (delta_product_reference); "torch",
"triton", "auto": the delta rule (ops/delta/api.py, with its Triton kernels on CUDA) over the interleaved
sequence of n_h·T micro-steps, the gate on each token's first micro-step and the query on its last, the
outputs read at the last micro-steps. That is exact: the same recurrence, one step at a time.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.checks import check_state
from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.delta.api import delta_rule


def check_product_inputs(q, k, v, beta, g, initial_state) -> None:
    if q.dim() != 4 or k.dim() != 5 or tuple(k.shape[:3]) != tuple(q.shape[:3]) or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"q must be [B, T, H, K] and k [B, T, H, n_h, K]; got {tuple(q.shape)}, {tuple(k.shape)}")
    B, T, H, n, K = k.shape
    if v.dim() != 5 or tuple(v.shape[:4]) != (B, T, H, n):
        raise ValueError(f"v must be [B, T, H, n_h, V] = [{B}, {T}, {H}, {n}, V], got {tuple(v.shape)}")
    if tuple(beta.shape) != (B, T, H, n):
        raise ValueError(f"beta must be [B, T, H, n_h] = {(B, T, H, n)}, got {tuple(beta.shape)}")
    if g is not None and tuple(g.shape) != (B, T, H):
        raise ValueError(f"g must be a scalar gate per head [B, T, H] = {(B, T, H)}, got {tuple(g.shape)}")
    check_state(initial_state, (B, H, K, v.shape[-1]), "[B, H, K, V]")


def delta_product(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False, impl="auto"):
    """(Gated) DeltaProduct (the module docstring has the recurrence).

    Args:
        q: [B, T, H, K]. k: [B, T, H, n_h, K] (L2-normalised). v: [B, T, H, n_h, V]. beta: [B, T, H, n_h].
        g: [B, T, H] log gate (<= 0) or None. scale: None means K ** -0.5.
        initial_state: [B, H, K, V] or None (zeros). output_final_state: return the last state.
        impl: "auto" | "reference" | "torch" | "triton".
    Returns:
        (o [B, T, H, V] in q's dtype, final_state [B, H, K, V] float32 (float64) or None).

    Example:
        >>> q, v = torch.randn(1, 10, 2, 4), torch.randn(1, 10, 2, 3, 4)
        >>> k = torch.nn.functional.normalize(torch.randn(1, 10, 2, 3, 4), dim=-1)
        >>> beta, g = torch.rand(1, 10, 2, 3), -torch.rand(1, 10, 2)
        >>> o, S = delta_product(q, k, v, beta, g, output_final_state=True)
        >>> o_ref, _ = delta_product(q, k, v, beta, g, impl="reference")
        >>> torch.allclose(o, o_ref, atol=1e-5), S.shape
        (True, torch.Size([1, 2, 4, 4]))
    """
    check_product_inputs(q, k, v, beta, g, initial_state)
    if impl == "reference":
        return delta_product_reference(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                                       output_final_state=output_final_state)
    B, T, H, n, K = k.shape
    V = v.shape[-1]
    ks = k.transpose(2, 3).reshape(B, T * n, H, K)  # micro-step t·n_h + j holds key j of token t
    vs = v.transpose(2, 3).reshape(B, T * n, H, V)
    bs = beta.transpose(2, 3).reshape(B, T * n, H)
    qs = torch.cat([q.new_zeros(B, T, n - 1, H, K), q[:, :, None]], 2).reshape(B, T * n, H, K)
    gs = None if g is None else torch.cat([g[:, :, None], g.new_zeros(B, T, n - 1, H)], 2).reshape(B, T * n, H)
    o, S = delta_rule(qs, ks, vs, bs, gs, scale=K ** -0.5 if scale is None else scale, initial_state=initial_state,
                      output_final_state=output_final_state, impl=impl)
    return o.view(B, T, n, H, V)[:, :, -1], S


def delta_product_reference(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False):
    """The truth: per token, A_t and B_t built as explicit products (float32, float64 for float64 inputs)."""
    B, T, H, n, K = k.shape
    V = v.shape[-1]
    ct = compute_dtype(q, k, v, beta, g, initial_state)
    scale = K ** -0.5 if scale is None else scale
    S = torch.zeros(B, H, K, V, dtype=ct, device=q.device) if initial_state is None else initial_state.to(ct)
    eye = torch.eye(K, dtype=ct, device=q.device)
    gates = torch.zeros(B, T, H, dtype=ct, device=q.device) if g is None else g.to(ct)
    outs = []
    for t in range(T):
        A = eye.expand(B, H, K, K)
        Bt = torch.zeros(B, H, K, V, dtype=ct, device=q.device)
        for j in range(n):
            kj, bj = k[:, t, :, j].to(ct), beta[:, t, :, j].to(ct)[..., None, None]
            Hj = eye - bj * kj[..., :, None] * kj[..., None, :]           # I - β k kᵀ
            A, Bt = Hj @ A, Hj @ Bt + bj * kj[..., :, None] * v[:, t, :, j].to(ct)[..., None, :]
        S = gates[:, t].exp()[..., None, None] * (A @ S) + Bt
        outs.append(scale * torch.einsum("bhk,bhkv->bhv", q[:, t].to(ct), S))
    o = torch.stack(outs, 1).to(q.dtype) if outs else v.new_zeros(B, 0, H, V, dtype=q.dtype)
    return o, (S if output_final_state else None)
