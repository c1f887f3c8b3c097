"""What the op families share (nothing here imports a family).

- dispatch.py: impl = "auto" | "reference" | "torch" | "triton", Triton availability, op overrides
- precision.py: the compute dtype (float32, float64 for float64 inputs) and autocast rules
- checks.py: input checks of every family (shapes, gates, states, chunk_size, cu_seqlens)
- varlen.py: packed sequences (cu_seqlens) run one sequence at a time on paths without a varlen kernel
- chunk_layout.py: [B, T, H, ...] <-> [B, H, N, C, ...] and the segmented scan of the chunked ops
- gate_sums.py: intra-chunk sums of log gates (prefix / suffix sums, pairwise decays and their gradients)
"""
