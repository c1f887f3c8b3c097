"""selective_scan: the Mamba-1 selective state space recurrence (Gu & Dao 2023, arXiv:2312.00752).

    y, h = selective_scan(u, delta, A, B, C, D=None, *, initial_state=None,
                          output_final_state=False, cu_seqlens=None, impl="auto", chunk_size=None)

u, delta [B, T, D] (delta = Δ > 0, already through softplus); A [D, N] (negative real);
B, C [B, T, N] (input-dependent, shared by the D channels); D [D] skip (optional).
State h [B, D, N], float32 (float64 for float64 inputs); None unless output_final_state.
cu_seqlens [S + 1] (int) packs S sequences into the T steps of a batch of one: states [S, D, N].

    h_t = exp(Δ_t ⊙ A) ⊙ h_{t-1} + (Δ_t ⊙ u_t) B_tᵀ,     y_t = h_t C_t + D ⊙ u_t

(zero-order hold on A, Euler on B, as in the paper). A step with Δ_t = 0 leaves h unchanged,
which is how mixers make padded steps invisible.
impl: "reference" (loop over time), "torch" (chunked scan, chunk_size steps per chunk; None: ~sqrt(T)),
"triton" (ops/scan/triton: the state kept in registers; CUDA, float16 / bfloat16 / float32, no cu_seqlens;
chunk_size is not used), "auto" (triton on CUDA when SCAN_TRITON_AUTO is on and the inputs fit, else torch).
"""

from __future__ import annotations

from attnzoo.ops.common.checks import check_scan_inputs
from attnzoo.ops.common.dispatch import resolve_impl, triton_available
from attnzoo.ops.common.precision import without_autocast

# "auto" takes the Triton kernel on CUDA (checked and timed on an H100: benchmarks/results/scan_gpu/, 4-45x)
SCAN_TRITON_AUTO = True


@without_autocast  # computes in float32 (the state) whatever the caller's autocast
def selective_scan(u, delta, A, B, C, D=None, *, initial_state=None, output_final_state=False, cu_seqlens=None,
                   impl="auto", chunk_size=None):
    """The selective scan (Mamba-1, Gu & Dao 2023, arXiv:2312.00752; the module docstring has the recurrence).

    Args:
        u, delta: [B, T, D] (delta > 0). A: [D, N] (negative). B, C: [B, T, N]. D: [D] skip or None.
        initial_state: [B, D, N] or None (zeros). output_final_state: return the last state.
        cu_seqlens: int [S + 1] packing S sequences into T (B == 1; states [S, D, N]), or None.
        impl: "auto" | "reference" | "torch" | "triton". chunk_size: steps per chunk of the torch path (None: ~sqrt(T)).
    Returns:
        (y [B, T, D] in u's dtype, final_state [B, D, N] float32 (float64) or None).

    Example:
        >>> u, dt = torch.randn(2, 30, 6), torch.rand(2, 30, 6)
        >>> A, Bm, Cm = -torch.rand(6, 4), torch.randn(2, 30, 4), torch.randn(2, 30, 4)
        >>> y, h = selective_scan(u, dt, A, Bm, Cm, output_final_state=True)
        >>> y.shape, h.shape
        (torch.Size([2, 30, 6]), torch.Size([2, 6, 4]))
        >>> torch.allclose(y, selective_scan(u, dt, A, Bm, Cm, impl="reference")[0], atol=1e-5)
        True
    """
    check_scan_inputs(u, delta, A, B, C, D, initial_state, cu_seqlens=cu_seqlens)
    fits = SCAN_TRITON_AUTO and u.is_cuda and cu_seqlens is None and _fits(u, delta, A, B, C)
    impl = resolve_impl(impl, u, triton_supported=fits)
    kw = {"initial_state": initial_state, "output_final_state": output_final_state, "cu_seqlens": cu_seqlens}
    if impl == "reference":
        from attnzoo.ops.scan.reference import selective_scan_reference

        return selective_scan_reference(u, delta, A, B, C, D, **kw)
    if impl == "torch":
        from attnzoo.ops.scan.chunk import chunk_selective_scan

        return chunk_selective_scan(u, delta, A, B, C, D, chunk_size=chunk_size, **kw)
    if cu_seqlens is not None:
        raise ValueError('selective_scan impl="triton" takes no cu_seqlens; use impl="torch" for packed sequences')
    from attnzoo.ops.scan.triton import triton_selective_scan

    y, h = triton_selective_scan(u, delta, A, B, C, D, initial_state=initial_state)
    return y, (h if output_final_state else None)


def _fits(u, delta, A, B, C) -> bool:
    if not triton_available():
        return False
    from attnzoo.ops.scan.triton import triton_scan_supported

    return triton_scan_supported(u, delta, A, B, C)
