"""Sigmoid output gate (G1 of Qiu et al. 2025, "Gated Attention for Large Language Models", arXiv:2505.06708).

    y = o ⊙ sigmoid(gate)      o [B, T, H, D]; gate [B, T, H, D] (elementwise) or [B, T, H, 1] (headwise)

Returns y [B, T, H, D] contiguous in o's dtype (ready for the output projection as [B, T, H·D]).
o and gate may be strided views (the gate is a slice of the query projection's output: one matmul
yields q and the gate); only their last dim must be contiguous for the Triton path.

impl: "reference" (float32 math, cast back), "torch" (o · sigmoid(gate) in the inputs' dtypes, the
unfused form), "triton" (one fused kernel forward, one backward: reads o and the gate once, writes y;
the backward writes do and dgate, reducing over D for the headwise gate), "auto" (Triton on CUDA).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.dispatch import resolve_impl, triton_interpret

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def sigmoid_output_gate_reference(o, gate):
    ct = torch.float64 if o.dtype == torch.float64 else torch.float32
    return (o.to(ct) * torch.sigmoid(gate.to(ct))).to(o.dtype)


def sigmoid_output_gate_torch(o, gate):
    return o * torch.sigmoid(gate).to(o.dtype)


def triton_supported(o, gate) -> bool:
    return o.dtype in DTYPES and gate.dtype in DTYPES and o.stride(-1) == 1 and gate.stride(-1) == 1 and \
        o.shape[-2] * o.shape[-1] <= 16384


def sigmoid_output_gate(o: torch.Tensor, gate: torch.Tensor, *, impl: str = "auto") -> torch.Tensor:
    if o.dim() != 4 or gate.dim() != 4 or gate.shape[:3] != o.shape[:3] or gate.shape[-1] not in (1, o.shape[-1]):
        raise ValueError(f"o [B, T, H, D] and gate [B, T, H, D] or [B, T, H, 1], got {tuple(o.shape)} and "
                         f"{tuple(gate.shape)}")
    if not (o.is_floating_point() and gate.is_floating_point()):
        raise ValueError(f"o and gate must be floating point, got {o.dtype} and {gate.dtype}")
    impl = resolve_impl(impl, o, gate, triton_supported=triton_supported(o, gate))
    if impl == "reference":
        return sigmoid_output_gate_reference(o, gate)
    if impl == "torch":
        return sigmoid_output_gate_torch(o, gate)
    if not triton_supported(o, gate):
        raise ValueError(f"triton sigmoid_output_gate needs o, gate in {DTYPES} with a contiguous last dim and "
                         f"H·D <= 16384, got {o.dtype}, {gate.dtype}, strides {o.stride()}, {gate.stride()}")
    if not (o.is_cuda or triton_interpret()):
        raise ValueError("triton sigmoid_output_gate needs CUDA tensors (or TRITON_INTERPRET=1)")
    from attnzoo.ops.gate.triton import SigmoidOutputGate

    return SigmoidOutputGate.apply(o, gate)
