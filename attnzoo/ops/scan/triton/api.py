"""Triton selective scan (Mamba-1, Gu & Dao 2023, arXiv:2312.00752): the entry point, its checks and autograd.

    y, h = triton_selective_scan(u, delta, A, B, C, D=None, *, initial_state=None)

u, delta [B, T, D] (float16 / bfloat16 / float32); A [D, N] negative; B, C [B, T, N]; D [D] or None;
initial_state [B, D, N] or None (zeros). Returns y [B, T, D] in u's dtype and the final state [B, D, N]
float32 (always computed: it costs one store per state). The recurrence and the backward's formulas are in
kernels.py; the state stays in registers, so [B, T, D, N] is never written (the torch path writes it
several times: the zoo's Mamba groups were the slowest of the grid, benchmarks/results/zoo_paper/).

Under torch.compile the op is the custom op `attnzoo::selective_scan` (backward
`attnzoo::selective_scan_backward`); in eager mode the same kernels run from an autograd.Function whose
vmap rule (torch.func.vmap, attnzoo.train.group) folds the vmapped dim into the batch: A and D per member
become [G, D, N] and [G, D], each batch row reading its member's (kernels.py). Varlen (cu_seqlens) and
float64 stay on the torch paths (ops/scan/api.py); a decode step (T = 1) runs the same kernels.
"""

from __future__ import annotations

from typing import Optional

import torch

import attnzoo.ops.linear.triton.api  # noqa: F401  (applies the interpreter patch of Triton 3.6: CPU tests)
from attnzoo.ops.common.checks import check_scan_inputs
from attnzoo.ops.common.dispatch import triton_interpret
from attnzoo.ops.common.opaque import compiling, empty_like_none, none_if_empty
from attnzoo.ops.common.tiles import MAX_GRID_YZ, cdiv, next_pow2

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# BD channels per program (fewer for wide states: at most STATE state elements per program); L steps per
# checkpointed chunk (the backward's scratch holds L states per program). BD 32 x N 16 was timed on an H100
# (benchmarks/results/scan_gpu/); STATE = 512 keeps that tile and caps wider ones (N = 64: BD 8) untimed.
# PREFETCH: the forward loads step t+1's inputs before step t computes (off until a GPU times it).
TUNE = {"BD": 32, "L": 64, "STATE": 512, "num_warps": 4, "PREFETCH": False}


def _limits(u, delta, A, B, C) -> str | None:
    dtypes = {t.dtype for t in (u, delta, B, C)}
    if not dtypes <= set(DTYPES):
        return f"needs u, delta, B, C in {DTYPES}, got {sorted(map(str, dtypes))}"
    if u.dim() == 3 and (u.shape[0] == 0 or u.shape[1] == 0):
        return f"needs B >= 1 and T >= 1, got {tuple(u.shape[:2])}"
    if A.dim() == 2 and A.shape[1] > 256:
        return f"needs N <= 256 states per channel, got {A.shape[1]}"
    if u.dim() == 3 and u.shape[0] > MAX_GRID_YZ:
        return f"needs B <= {MAX_GRID_YZ} sequences (the grid's second axis), got {u.shape[0]}"
    return None


def triton_scan_supported(u, delta, A, B, C) -> bool:
    """Inputs the kernels take (the device is dispatch's business); shapes are checked by the caller."""
    return u.dim() == 3 and A.dim() == 2 and _limits(u, delta, A, B, C) is None


def _check(u, delta, A, B, C):
    limit = _limits(u, delta, A, B, C)
    if limit is not None:
        raise ValueError(f"triton selective scan {limit} (impl='torch' takes it)")
    if not (u.is_cuda or triton_interpret()):
        raise ValueError("triton selective scan needs CUDA tensors (or TRITON_INTERPRET=1)")


def _tiles(Dm, N):
    """(BD, NP): channels per program and the padded state count; BD shrinks for wide states so that a
    program's [BD, NP] state tiles stay within TUNE["STATE"] elements (the registers of its warps)."""
    npw = next_pow2(N)
    return max(1, min(TUNE["BD"], next_pow2(Dm), TUNE["STATE"] // npw)), npw


def _fwd(u, dt, A, B, C, D, h0, save):
    """A [G, D, N], D [G, D] or None; the batch is G groups of rows. -> y, hT, ckpt (empty unless save)."""
    from attnzoo.ops.scan.triton.kernels import scan_fwd_kernel

    Bsz, T, Dm = u.shape
    N = A.shape[-1]
    bd, npw = _tiles(Dm, N)
    L = TUNE["L"]
    y = torch.empty_like(u)
    hT = u.new_empty(Bsz, Dm, N, dtype=torch.float32)
    ck = u.new_empty(Bsz, cdiv(T, L), Dm, N, dtype=torch.float32) if save else hT
    scan_fwd_kernel[(cdiv(Dm, bd), Bsz)](
        u, dt, A, B, C, A if D is None else D, hT if h0 is None else h0, y, hT, ck, T, Dm, N, Bsz // A.shape[0],
        L=L, HAS_D=D is not None, HAS_H0=h0 is not None, SAVE=save, BD=bd, NP=npw, PREFETCH=bool(TUNE["PREFETCH"]),
        num_warps=TUNE["num_warps"])
    return y, hT, (ck if save else empty_like_none(u))


def _bwd(u, dt, A, B, C, D, ck, dy, dhT):
    from attnzoo.ops.scan.triton.kernels import scan_bwd_kernel

    Bsz, T, Dm = u.shape
    G, N = A.shape[0], A.shape[-1]
    bd, npw = _tiles(Dm, N)
    L = TUNE["L"]
    nd = cdiv(Dm, bd)
    P = Bsz * nd
    f32 = dict(dtype=torch.float32)
    sc = u.new_empty(P, L, bd, npw, **f32)
    du, ddt = torch.empty_like(u), torch.empty_like(dt)
    dBp, dCp = u.new_empty(P, T, npw, **f32), u.new_empty(P, T, npw, **f32)
    dAp, dh0 = u.new_empty(Bsz, Dm, N, **f32), u.new_empty(Bsz, Dm, N, **f32)
    dDp = u.new_empty(Bsz, Dm, **f32) if D is not None else dh0
    scan_bwd_kernel[(nd, Bsz)](
        u, dt, A, B, C, A if D is None else D, ck, dy, dh0 if dhT is None else dhT, sc,
        du, ddt, dBp, dCp, dAp, dDp, dh0, T, Dm, N, Bsz // G,
        L=L, HAS_D=D is not None, HAS_DHT=dhT is not None, BD=bd, NP=npw, num_warps=TUNE["num_warps"])
    dB = dBp.view(Bsz, nd, T, npw).sum(1)[..., :N].to(B.dtype)
    dC = dCp.view(Bsz, nd, T, npw).sum(1)[..., :N].to(C.dtype)
    dA = dAp.view(G, Bsz // G, Dm, N).sum(1).to(A.dtype)
    dD = dDp.view(G, Bsz // G, Dm).sum(1).to(D.dtype) if D is not None else None
    return du, ddt, dA, dB, dC, dD, dh0


@torch.library.custom_op("attnzoo::selective_scan", mutates_args=())
def scan_op(u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
            D: Optional[torch.Tensor], h0: Optional[torch.Tensor],  # noqa: UP045
            save: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _fwd(u, dt, A, B, C, D, h0, save)


@scan_op.register_fake
def _(u, dt, A, B, C, D, h0, save):
    Bsz, T, Dm = u.shape
    N, L = A.shape[-1], TUNE["L"]
    ck = u.new_empty(Bsz, cdiv(T, L), Dm, N, dtype=torch.float32) if save else empty_like_none(u)
    return torch.empty_like(u), u.new_empty(Bsz, Dm, N, dtype=torch.float32), ck


@torch.library.custom_op("attnzoo::selective_scan_backward", mutates_args=())
def scan_backward_op(
    u: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
    D: Optional[torch.Tensor], ck: torch.Tensor, dy: torch.Tensor, dhT: Optional[torch.Tensor],  # noqa: UP045
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    du, ddt, dA, dB, dC, dD, dh0 = _bwd(u, dt, A, B, C, D, ck, dy, dhT)
    return du, ddt, dA, dB, dC, (dD if dD is not None else empty_like_none(u)), dh0


@scan_backward_op.register_fake
def _(u, dt, A, B, C, D, ck, dy, dhT):
    dD = torch.empty_like(D) if D is not None else empty_like_none(u)
    Bsz, _, Dm = u.shape
    return (torch.empty_like(u), torch.empty_like(dt), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), dD, u.new_empty(Bsz, Dm, A.shape[-1], dtype=torch.float32))


def _grads(bwd, ctx, dy, dhT):
    u, dt, A, B, C, D, h0, ck = ctx.saved_tensors
    if ck.numel() == 0:
        raise RuntimeError("selective scan backward without the forward's checkpoints (the forward ran with "
                           "grad mode off)")
    du, ddt, dA, dB, dC, dD, dh0 = bwd(u, dt, A, B, C, D, ck, dy.contiguous(),
                                       None if dhT is None else dhT.contiguous())
    return (du, ddt, dA, dB, dC, none_if_empty(dD) if D is not None else None,
            dh0.to(h0.dtype) if h0 is not None else None)


def _setup_context(ctx, inputs, output):
    u, dt, A, B, C, D, h0 = inputs[:7]
    ctx.save_for_backward(u, dt, A, B, C, D, h0, output[2])
    ctx.mark_non_differentiable(output[2])


def _op_backward(ctx, dy, dhT, _dck):
    return (*_grads(scan_backward_op, ctx, dy, dhT), None)


scan_op.register_autograd(_op_backward, setup_context=_setup_context)


class _EagerScan(torch.autograd.Function):
    """The custom op's pass for eager mode, with a vmap rule: apply(u, dt, A, B, C, D, h0, save)."""

    @staticmethod
    def forward(u, dt, A, B, C, D, h0, save):
        return _fwd(u, dt, A, B, C, D, h0, save)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, dy, dhT, _dck):
        return (*_grads(_bwd, ctx, dy, dhT), None)

    @staticmethod
    def vmap(info, in_dims, u, dt, A, B, C, D, h0, save):
        """Members fold into the batch: [G, Bsz, ...] -> [G * Bsz, ...]; A [G, Gm, D, N] -> [G * Gm, D, N]."""
        G = info.batch_size
        lead = lambda t, d: None if t is None else (t.movedim(d, 0) if d is not None else t.expand(G, *t.shape))  # noqa: E731
        fold = lambda t: None if t is None else t.reshape(G * t.shape[1], *t.shape[2:]).contiguous()  # noqa: E731
        u, dt, B, C = (lead(t, d) for t, d in zip((u, dt, B, C), (*in_dims[:2], *in_dims[3:5])))
        Bsz = u.shape[1]
        if in_dims[2] is not None or in_dims[5] is not None:  # A or D per member: G * Gm groups of rows
            A, D = fold(lead(A, in_dims[2])), fold(lead(D, in_dims[5]))
        h0 = fold(lead(h0, in_dims[6]))
        y, hT, ck = _EagerScan.apply(fold(u), fold(dt), A, fold(B), fold(C), D, h0, save)
        unfold = lambda t: t.reshape(G, Bsz, *t.shape[1:]) if t.numel() else t.expand(G, *t.shape)  # noqa: E731
        return (unfold(y), unfold(hT), unfold(ck)), (0, 0, 0)


def triton_selective_scan(u, delta, A, B, C, D=None, *, initial_state=None):
    """The selective scan (module docstring): (y [B, T, D] in u's dtype, final state [B, D, N] float32)."""
    check_scan_inputs(u, delta, A, B, C, D, initial_state)
    _check(u, delta, A, B, C)
    # the chunk checkpoints whenever autograd records (requires_grad is not seen through vmap's wrappers);
    # they are 1/L of the states, dropped at once when nothing is recorded
    save = torch.is_grad_enabled()
    args = (u.contiguous(), delta.contiguous(), A.float().unsqueeze(0).contiguous(), B.contiguous(), C.contiguous(),
            None if D is None else D.float().unsqueeze(0).contiguous(),
            None if initial_state is None else initial_state.float().contiguous(), save)
    y, hT, _ = scan_op(*args) if compiling() else _EagerScan.apply(*args)
    return y, hT
