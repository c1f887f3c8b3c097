"""Fused sigmoid output gate (G1, arXiv:2505.06708) in Triton: one program per token row holds all H·D
values; the forward reads o and the gate (strided views allowed) and writes y = o ⊙ σ(gate); the
backward writes do = dy ⊙ σ and dgate = (dy ⊙ o) σ (1 - σ), summed over D for a headwise gate."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _offsets(row, T, sb, st, sh, H, W, BH: tl.constexpr, BW: tl.constexpr):
    b = row // T
    t = row % T
    hh = tl.arange(0, BH)
    ww = tl.arange(0, BW)
    return b * sb + t * st + hh[:, None] * sh + ww[None, :], (hh[:, None] < H) & (ww[None, :] < W)


@triton.jit
def gate_fwd_kernel(O, GATE, Y, T, H, D, WG, sob, sot, soh, sgb, sgt, sgh,
                    BH: tl.constexpr, BD: tl.constexpr, BWG: tl.constexpr):
    row = tl.program_id(0)
    ooff, omask = _offsets(row, T, sob, sot, soh, H, D, BH, BD)
    goff, gmask = _offsets(row, T, sgb, sgt, sgh, H, WG, BH, BWG)
    o = tl.load(O + ooff, mask=omask, other=0.0).to(tl.float32)
    g = tl.load(GATE + goff, mask=gmask, other=0.0).to(tl.float32)
    y = o * tl.sigmoid(g)  # [BH, BD] * [BH, BWG]: BWG is BD or 1 (broadcast)
    yoff, ymask = _offsets(row, T, T * H * D, H * D, D, H, D, BH, BD)
    tl.store(Y + yoff, y.to(Y.dtype.element_ty), mask=ymask)


@triton.jit
def gate_bwd_kernel(O, GATE, DY, DO, DG, T, H, D, WG, sob, sot, soh, sgb, sgt, sgh,
                    BH: tl.constexpr, BD: tl.constexpr, BWG: tl.constexpr):
    row = tl.program_id(0)
    ooff, omask = _offsets(row, T, sob, sot, soh, H, D, BH, BD)
    goff, gmask = _offsets(row, T, sgb, sgt, sgh, H, WG, BH, BWG)
    coff, cmask = _offsets(row, T, T * H * D, H * D, D, H, D, BH, BD)  # dy, do: contiguous [B, T, H, D]
    o = tl.load(O + ooff, mask=omask, other=0.0).to(tl.float32)
    g = tl.load(GATE + goff, mask=gmask, other=0.0).to(tl.float32)
    dy = tl.load(DY + coff, mask=cmask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    tl.store(DO + coff, (dy * sig).to(DO.dtype.element_ty), mask=cmask)
    dsig = dy * o
    if BWG == 1:
        dsig = tl.sum(dsig, 1)[:, None]
    dgoff, dgmask = _offsets(row, T, T * H * WG, H * WG, WG, H, WG, BH, BWG)
    tl.store(DG + dgoff, (dsig * sig * (1.0 - sig)).to(DG.dtype.element_ty), mask=dgmask)


def _meta(o, gate):
    B, T, H, D = o.shape
    WG = gate.shape[-1]
    BD = triton.next_power_of_2(D)
    return (B, T, H, D, WG), {"BH": triton.next_power_of_2(H), "BD": BD, "BWG": 1 if WG == 1 else BD,
                              "num_warps": 4 if H * D <= 4096 else 8}


class SigmoidOutputGate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, o, gate):
        (B, T, H, D, WG), kw = _meta(o, gate)
        y = torch.empty(B, T, H, D, device=o.device, dtype=o.dtype)
        gate_fwd_kernel[(B * T,)](o, gate, y, T, H, D, WG, *o.stride()[:3], *gate.stride()[:3], **kw)
        ctx.save_for_backward(o, gate)
        return y

    @staticmethod
    def backward(ctx, dy):
        o, gate = ctx.saved_tensors
        (B, T, H, D, WG), kw = _meta(o, gate)
        dy = dy.contiguous()
        do = torch.empty(B, T, H, D, device=o.device, dtype=o.dtype)
        dg = torch.empty(B, T, H, WG, device=o.device, dtype=gate.dtype)
        gate_bwd_kernel[(B * T,)](o, gate, dy, do, dg, T, H, D, WG, *o.stride()[:3], *gate.stride()[:3], **kw)
        return do, dg
