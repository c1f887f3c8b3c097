"""selective_scan: the Mamba-1 selective state space recurrence (Gu & Dao 2023, arXiv:2312.00752).

    y, h = selective_scan(u, delta, A, B, C, D=None, *, initial_state=None,
                          output_final_state=False, impl="auto")

u, delta [B, T, D] (delta = Δ > 0, already through softplus); A [D, N] (negative real);
B, C [B, T, N] (input-dependent, shared by the D channels); D [D] skip (optional).
State h [B, D, N], float32 (float64 for float64 inputs); None unless output_final_state.

    h_t = exp(Δ_t ⊙ A) ⊙ h_{t-1} + (Δ_t ⊙ u_t) B_tᵀ,     y_t = h_t C_t + D ⊙ u_t

(zero-order hold on A, Euler on B, as in the paper). A step with Δ_t = 0 leaves h unchanged,
which is how mixers make padded steps invisible.
impl: "reference" (loop over time), "torch" (chunked scan, chunk_size steps per chunk; None: ~sqrt(T)),
"auto" (= torch).
"""

from __future__ import annotations

from attnzoo.ops.dispatch import resolve_impl, without_autocast


def check_scan_inputs(u, delta, A, B, C, D, initial_state):
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be [B, T, D], got {tuple(u.shape)} and {tuple(delta.shape)}")
    Bsz, T, Dm = u.shape
    if A.dim() != 2 or A.shape[0] != Dm:
        raise ValueError(f"A must be [D, N] = [{Dm}, N], got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if tuple(t.shape) != (Bsz, T, N):
            raise ValueError(f"{name} must be [B, T, N] = {(Bsz, T, N)}, got {tuple(t.shape)}")
    if D is not None and tuple(D.shape) != (Dm,):
        raise ValueError(f"D must be [D] = [{Dm}], got {tuple(D.shape)}")
    if initial_state is not None and tuple(initial_state.shape) != (Bsz, Dm, N):
        raise ValueError(f"initial_state must be [B, D, N] = {(Bsz, Dm, N)}, got {tuple(initial_state.shape)}")


@without_autocast  # computes in float32 (the state) whatever the caller's autocast
def selective_scan(u, delta, A, B, C, D=None, *, initial_state=None, output_final_state=False, impl="auto",
                   chunk_size=None):
    check_scan_inputs(u, delta, A, B, C, D, initial_state)
    impl = resolve_impl(impl, u, triton_supported=False)
    kw = {"initial_state": initial_state, "output_final_state": output_final_state}
    if impl == "reference":
        from attnzoo.ops.scan.reference import selective_scan_reference

        return selective_scan_reference(u, delta, A, B, C, D, **kw)
    if impl == "torch":
        from attnzoo.ops.scan.chunk import chunk_selective_scan

        return chunk_selective_scan(u, delta, A, B, C, D, chunk_size=chunk_size, **kw)
    raise ValueError('selective_scan has no Triton kernel yet; use impl="torch" or "reference"')
