"""Fused row norms in Triton: the L2 normalisation of the delta-rule mixers' q / k and the gated RMSNorm of their
outputs (Gated DeltaNet, arXiv:2412.06464; Mamba-2, arXiv:2405.21060), one kernel forward and one backward
each, over rows of D <= 256 values (BR rows per program), float32 inside, the input dtype out.

    l2:    y = x r,            r = (Σ x² + eps)^(-1/2)          dx = r (dy − y (y · dy))
    gated: y = n w a(z),       n = x s, s = (mean x² + eps)^(-1/2), a = silu or sigmoid
           dn = dy w a;  dx = s (dn − n mean(dn n));  dz = dy n w a'(z);  dw = Σ_rows dy n a

Nothing is saved but the inputs (the backward recomputes r, s, n). dw leaves as float32 partial sums per
program that torch adds up (no atomics); the rows may come in G groups of R rows with a weight each
([G, D]: a vmapped group of models, attnzoo.train.group), so every program's BR rows lie in one group
(BR divides R). The unfused formulas are in ops/norm/api.py (the reference and the CPU path).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_D = 256
BR_MAX = 16  # rows per program


@triton.jit
def _tile(X, pid, M, D, BR: tl.constexpr, BD: tl.constexpr):
    r = pid * BR + tl.arange(0, BR)
    c = tl.arange(0, BD)
    m = (r < M)[:, None] & (c < D)[None, :]
    off = r.to(tl.int64)[:, None] * D + c[None, :]
    return r, c, m, off, tl.load(X + off, mask=m, other=0.0).to(tl.float32)


@triton.jit
def l2_fwd_kernel(X, Y, M, D, eps, BR: tl.constexpr, BD: tl.constexpr):
    r, c, m, off, x = _tile(X, tl.program_id(0), M, D, BR, BD)
    y = x * tl.rsqrt(tl.sum(x * x, 1) + eps)[:, None]
    tl.store(Y + off, y.to(Y.dtype.element_ty), mask=m)


@triton.jit
def l2_bwd_kernel(X, DY, DX, M, D, eps, BR: tl.constexpr, BD: tl.constexpr):
    r, c, m, off, x = _tile(X, tl.program_id(0), M, D, BR, BD)
    dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
    inv = tl.rsqrt(tl.sum(x * x, 1) + eps)[:, None]
    y = x * inv
    dx = inv * (dy - y * tl.sum(y * dy, 1)[:, None])
    tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=m)


@triton.jit
def _act(z, SILU: tl.constexpr):
    """(a(z), a'(z)) for a = silu or sigmoid."""
    sg = tl.sigmoid(z)
    if SILU:
        return z * sg, sg * (1.0 + z * (1.0 - sg))
    return sg, sg * (1.0 - sg)


@triton.jit
def gated_fwd_kernel(X, Z, W, Y, M, D, R, eps, SILU: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0)
    r, c, m, off, x = _tile(X, pid, M, D, BR, BD)
    z = tl.load(Z + off, mask=m, other=0.0).to(tl.float32)
    w = tl.load(W + (pid * BR // R) * D + c, mask=c < D, other=0.0).to(tl.float32)
    n = x * tl.rsqrt(tl.sum(x * x, 1) / D + eps)[:, None]
    a, _ = _act(z, SILU)
    tl.store(Y + off, (n * w[None, :] * a).to(Y.dtype.element_ty), mask=m)


@triton.jit
def gated_bwd_kernel(X, Z, W, DY, DX, DZ, DW, M, D, R, eps, SILU: tl.constexpr, BR: tl.constexpr,
                     BD: tl.constexpr):
    """DW: [programs, D] float32, this program's Σ over its rows."""
    pid = tl.program_id(0)
    r, c, m, off, x = _tile(X, pid, M, D, BR, BD)
    z = tl.load(Z + off, mask=m, other=0.0).to(tl.float32)
    dy = tl.load(DY + off, mask=m, other=0.0).to(tl.float32)
    w = tl.load(W + (pid * BR // R) * D + c, mask=c < D, other=0.0).to(tl.float32)
    s = tl.rsqrt(tl.sum(x * x, 1) / D + eps)[:, None]
    n = x * s
    a, da = _act(z, SILU)
    dn = dy * w[None, :] * a
    dx = s * (dn - n * (tl.sum(dn * n, 1) / D)[:, None])
    tl.store(DX + off, dx.to(DX.dtype.element_ty), mask=m)
    tl.store(DZ + off, (dy * n * w[None, :] * da).to(DZ.dtype.element_ty), mask=m)
    tl.store(DW + pid.to(tl.int64) * D + c, tl.sum(dy * n * a, 0), mask=c < D)


def _rows(R: int) -> int:
    """Rows per program with G > 1 groups of R rows: the largest power of two <= BR_MAX dividing R (so a program
    never spans two groups; one group takes BR_MAX, its last program masked)."""
    br = BR_MAX
    while R % br:
        br //= 2
    return br


def _launch(M, D, br):
    return (triton.cdiv(M, br),), dict(BR=br, BD=triton.next_power_of_2(D), num_warps=4)


def l2_fwd(x, eps):
    M, D = x.numel() // x.shape[-1], x.shape[-1]
    y = torch.empty_like(x)
    grid, kw = _launch(M, D, BR_MAX)
    l2_fwd_kernel[grid](x, y, M, D, eps, **kw)
    return y


def l2_bwd(x, dy, eps):
    M, D = x.numel() // x.shape[-1], x.shape[-1]
    dx = torch.empty_like(x)
    grid, kw = _launch(M, D, BR_MAX)
    l2_bwd_kernel[grid](x, dy, dx, M, D, eps, **kw)
    return dx


def gated_fwd(x, z, w, eps, silu):
    """x, z [M, D] (rows), w [G, D] (G groups of M / G rows)."""
    M, D = x.shape
    y = torch.empty_like(x)
    br = BR_MAX if w.shape[0] == 1 else _rows(M // w.shape[0])
    grid, kw = _launch(M, D, br)
    gated_fwd_kernel[grid](x, z, w, y, M, D, M // w.shape[0], eps, SILU=silu, **kw)
    return y


def gated_bwd(x, z, w, dy, eps, silu):
    M, D = x.shape
    G = w.shape[0]
    br = BR_MAX if G == 1 else _rows(M // G)
    grid, kw = _launch(M, D, br)
    dx, dz = torch.empty_like(x), torch.empty_like(z)
    dwp = x.new_empty(grid[0], D, dtype=torch.float32)
    gated_bwd_kernel[grid](x, z, w, dy, dx, dz, dwp, M, D, M // G, eps, SILU=silu, **kw)
    return dx, dz, dwp.view(G, -1, D).sum(1).to(w.dtype)


class L2Norm(torch.autograd.Function):
    """apply(x [..., D] contiguous, eps) -> y; vmap folds the members into the rows (a row norm)."""

    @staticmethod
    def forward(x, eps):
        return l2_fwd(x, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.eps = inputs[1]

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return l2_bwd(x, dy.contiguous(), ctx.eps), None

    @staticmethod
    def vmap(info, in_dims, x, eps):
        return L2Norm.apply(x.movedim(in_dims[0], 0).contiguous(), eps), 0


class GatedRMSNorm(torch.autograd.Function):
    """apply(x [M, D], z [M, D], w [G, D], eps, silu) -> y [M, D]; vmap folds the members into the rows, a
    weight per member becoming G groups of rows."""

    @staticmethod
    def forward(x, z, w, eps, silu):
        return gated_fwd(x, z, w, eps, silu)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, z, w, eps, silu = inputs
        ctx.save_for_backward(x, z, w)
        ctx.eps, ctx.silu = eps, silu

    @staticmethod
    def backward(ctx, dy):
        x, z, w = ctx.saved_tensors
        dx, dz, dw = gated_bwd(x, z, w, dy.contiguous(), ctx.eps, ctx.silu)
        return dx, dz, dw, None, None

    @staticmethod
    def vmap(info, in_dims, x, z, w, eps, silu):
        G = info.batch_size
        lead = lambda t, d: t.movedim(d, 0) if d is not None else t.expand(G, *t.shape)  # noqa: E731
        x, z = lead(x, in_dims[0]), lead(z, in_dims[1])
        M = x.shape[1]
        rows = lambda t: t.reshape(G * M, t.shape[-1]).contiguous()  # noqa: E731
        w = lead(w, in_dims[2]).reshape(-1, w.shape[-1]).contiguous() if in_dims[2] is not None else w
        y = GatedRMSNorm.apply(rows(x), rows(z), w, eps, silu)
        return y.view(G, M, -1), 0
