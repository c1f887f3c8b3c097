"""mesa_attention: the mesa layer's per-token least squares (MesaNet, von Oswald et al. 2025,
"MesaNet: Sequence Modeling by Locally Optimal Test-Time Training", arXiv:2506.05233).

    o, S = mesa_attention(q, k, v, beta, g, lam, *, initial_state=None, output_final_state=False,
                          cg_steps=30, impl="auto", chunk_size=16)

    G_t = γ_t G_{t-1} + β_t k_t v_tᵀ,   H_t = γ_t H_{t-1} + β_t k_t k_tᵀ,   γ_t = exp(g_t)
    o_t = G_tᵀ (H_t + diag(λ))^{-1} q_t

that is, o_t = Φ_t q_t with Φ_t = argmin_Φ ½ Σ_{s<=t} β_s (Π_{s<r<=t} γ_r) |v_s − Φ k_s|² + ½ Tr(Φ Λ Φᵀ)
(plus the decayed initial state's terms). q, k [B, T, H, K]; v [B, T, H, V]; beta [B, T, H] (input gate,
>= 0); g [B, T, H] log forget gate (<= 0) or None (no forgetting); lam [H, K] (> 0). The state S
[B, H, K, V + K] (float32; float64 for float64 inputs) is G [K, V] (the paper's G transposed) next to
H [K, K]: both are gated linear-attention states with keys k_t, values β_t v_t and β_t k_t. Only the
symmetric part of an initial H is used (H is symmetric by construction).

impl: "reference" (reference.py: a loop with an exact solve per token), "torch" (chunk.py: CG with
cg_steps steps on chunked H_t products, then the chunked GLA op for G_tᵀ q*), "auto" (= "torch").
cg_steps and chunk_size are ignored by the reference. chunk_size is the chunk of the solve's H_t products:
each CG step costs about K² + 2·C·K per token, so short chunks pay (16: 1.4x faster than 64 at K = 32, T = 64).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.checks import check_chunk_size
from attnzoo.ops.common.dispatch import resolve_impl
from attnzoo.ops.common.precision import compute_dtype, without_autocast
from attnzoo.ops.mesa.checks import check_cg_steps, check_mesa_inputs


@without_autocast
def mesa_attention(q, k, v, beta, g=None, lam=None, *, initial_state=None, output_final_state=False, cg_steps=30,
                   impl="auto", chunk_size=16):
    """The mesa layer (module docstring: recurrences, shapes, impl).

    Returns (o [B, T, H, V] in q's dtype, final_state [B, H, K, V + K] or None).

    Example:
        >>> B, T, H, K, V = 2, 20, 2, 8, 4
        >>> q, k = torch.randn(B, T, H, K), torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
        >>> v, beta, g = torch.randn(B, T, H, V), torch.rand(B, T, H), -torch.rand(B, T, H)
        >>> o, S = mesa_attention(q, k, v, beta, g, torch.ones(H, K), output_final_state=True)
        >>> o.shape, S.shape
        (torch.Size([2, 20, 2, 4]), torch.Size([2, 2, 8, 12]))
        >>> o_ref, _ = mesa_attention(q, k, v, beta, g, torch.ones(H, K), impl="reference")
        >>> torch.allclose(o, o_ref, atol=1e-4)
        True
    """
    if lam is None:
        raise ValueError("lam (the regulariser diagonal [H, K], > 0) is required")
    check_mesa_inputs(q, k, v, beta, g, lam, initial_state)
    check_cg_steps(cg_steps)
    check_chunk_size(chunk_size)
    if impl == "triton":
        raise ValueError('mesa_attention has no Triton kernel: impl must be "auto", "reference" or "torch"')
    inner = impl  # the GLA op under the torch path: "auto" lets it take Triton on CUDA
    impl = resolve_impl(impl, q)
    if impl == "reference":
        from attnzoo.ops.mesa.reference import mesa_attention_reference

        return mesa_attention_reference(q, k, v, beta, g, lam, initial_state=initial_state,
                                        output_final_state=output_final_state)
    from attnzoo.ops.linear import gated_linear_attention
    from attnzoo.ops.mesa.chunk import chunk_mesa_solve

    K, V = q.shape[-1], v.shape[-1]
    ct = compute_dtype(q, k, v, beta, g, lam, initial_state)
    G0, H0 = (None, None) if initial_state is None else initial_state.to(ct).split([V, K], -1)
    x, H_final = chunk_mesa_solve(q, k, beta, g, lam, H0, cg_steps=cg_steps, chunk_size=chunk_size)
    bv = beta.to(ct)[..., None] * v.to(ct)
    o, G_final = gated_linear_attention(
        x, k.to(ct), bv, None if g is None else g.to(ct), scale=1.0,
        initial_state=None if G0 is None else G0.contiguous(), output_final_state=output_final_state,
        impl="auto" if inner == "auto" else "torch")
    state = torch.cat([G_final, H_final], -1) if output_final_state else None
    return o.to(q.dtype), state
