"""Row norms of the recurrent mixers: the L2 normalisation of q / k (DeltaNet, arXiv:2406.06484, and its
kin) and the gated RMSNorm of their outputs (Gated DeltaNet, arXiv:2412.06464; Mamba-2, arXiv:2405.21060).

    y = l2_norm(x, eps=1e-6)                                  x / sqrt(Σ x² + eps) over the last dim
    y = gated_rms_norm(x, weight, gate, eps, activation)      x / sqrt(mean x² + eps) · weight · act(gate)

x, gate [..., D] (same shape); weight [D]; activation "silu" or "sigmoid"; y in x's dtype.
impl: "torch" (the unfused formulas: l2 in x's dtype; the gated norm in float32, rounded to x's dtype, then
times act(gate), as mixers.layers.GatedRMSNorm always computed), "reference" (the same in float32 / float64
throughout), "triton" (one fused kernel forward and one backward each, ops/norm/triton.py; D <= 256),
"auto" (Triton on CUDA while NORM_TRITON_AUTO is on, else torch; under torch.compile always torch: inductor
fuses those formulas itself, and dynamo need not trace the kernels' autograd.Function). The delta-rule
layers spend about 4 of their 11 ms (fwd+bwd, d_model 2048, H100) in such unfused elementwise passes
(results/short_conv/).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.dispatch import resolve_impl, triton_available, triton_interpret
from attnzoo.ops.common.opaque import compiling

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
ACTIVATIONS = {"silu": F.silu, "sigmoid": torch.sigmoid}
# "auto" takes the fused kernels on CUDA: on since the 2026-12-07 H100 check (benchmarks/results/norm_gpu/:
# within 3.4e-3 of the float32 formulas in bf16; l2 4.4x, gated 7.4x the torch passes fwd+bwd; the whole
# gated_deltanet / deltanet layers at d_model 2048 1.40x / 1.13x)
NORM_TRITON_AUTO = True


def _fits(x) -> bool:
    return (NORM_TRITON_AUTO and not compiling() and x.is_cuda and x.dtype in DTYPES and 0 < x.shape[-1] <= 256
            and x.numel() > 0 and triton_available())


def _check_triton(*ts):
    if any(t.dtype not in DTYPES for t in ts) or ts[0].shape[-1] > 256 or ts[0].numel() == 0:
        raise ValueError(f"triton norms need {DTYPES} inputs with 1 <= D <= 256 and at least one row, got "
                         f"{[t.dtype for t in ts]}, shape {tuple(ts[0].shape)}")
    if not (ts[0].is_cuda or triton_interpret()):
        raise ValueError("triton norms need CUDA tensors (or TRITON_INTERPRET=1)")


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """x / sqrt(mean x² + eps) · weight (weight None: no scale) over the last dim, in float32 for 16-bit x,
    rounded to x's dtype: mixers.layers.RMSNorm's formula, and the gated norm's torch path before its gate."""
    xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    return y.to(x.dtype)


def l2_norm(x: torch.Tensor, eps: float = 1e-6, *, impl: str = "auto") -> torch.Tensor:
    """x / sqrt(Σ x² + eps) over the last dim (module docstring)."""
    impl = resolve_impl(impl, x, triton_supported=_fits(x))
    if impl == "torch":
        return x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps)
    if impl == "reference":
        xf = x.double() if x.dtype == torch.float64 else x.float()
        return (xf * torch.rsqrt(xf.pow(2).sum(-1, keepdim=True) + eps)).to(x.dtype)
    _check_triton(x)
    from attnzoo.ops.norm.triton import L2Norm

    return L2Norm.apply(x.contiguous(), float(eps))


def gated_rms_norm(x: torch.Tensor, weight: torch.Tensor, gate: torch.Tensor, eps: float = 1e-6,
                   activation: str = "silu", *, impl: str = "auto") -> torch.Tensor:
    """x / sqrt(mean x² + eps) · weight · act(gate) over the last dim (module docstring)."""
    if gate.shape != x.shape or weight.shape != x.shape[-1:]:
        raise ValueError(f"gate must be x's shape {tuple(x.shape)} and weight [{x.shape[-1]}], got "
                         f"{tuple(gate.shape)} and {tuple(weight.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    impl = resolve_impl(impl, x, gate, triton_supported=_fits(x) and gate.dtype in DTYPES)
    if impl == "torch":
        return rms_norm(x, weight, eps) * ACTIVATIONS[activation](gate)
    if impl == "reference":
        wide = x.double() if x.dtype == torch.float64 else x.float()
        n = wide * torch.rsqrt(wide.pow(2).mean(-1, keepdim=True) + eps) * weight.to(wide.dtype)
        return (n * ACTIVATIONS[activation](gate.to(wide.dtype))).to(x.dtype)
    _check_triton(x, gate)
    from attnzoo.ops.norm.triton import GatedRMSNorm

    D = x.shape[-1]
    y = GatedRMSNorm.apply(x.reshape(-1, D).contiguous(), gate.reshape(-1, D).contiguous(),
                           weight.unsqueeze(0).contiguous(), float(eps), activation == "silu")
    return y.view(x.shape)
