"""The sequence-parallel recurrent op as one autograd.Function, for any op whose shard is an affine map.

A recurrent op with state S [B, H, K, V] and outputs linear in the state, run on one shard of the
sequence from an incoming state S_in, decomposes as

    o = o_local + M S_in                 (o_local: the shard's output from a zero state; M [B, T, H, K])
    S_out = A S_in + B                   (the shard's map: A diagonal or dense, B its end state from zero)

A `body` supplies `prepare(*inputs) -> (A, B, M)` (differentiable torch code) and `local(*inputs) ->
o_local` (the public single-device op). Forward: prepare, start the scan of (A, B) across the ranks,
compute o_local while it runs, then add M S_in. Backward, given do and dS_out (the user's gradient on
this rank's end state):

    dM = do S_inᵀ,   C = Mᵀ do + Aᵀ dS_out                   (local, before any communication)
    reverse scan:   x = gradient arriving from rank p+1,   dS_in = Aᵀ x + C  (sent to rank p-1)
    while it runs:  the gradients of o_local (the single-device op's backward)
    then:           dB = dS_out + x,   dA = (dS_out + x) S_inᵀ (diagonal: summed over V)

and the gradients of prepare's inputs through (A, B, M) by autograd; rank 0's dS_in is the gradient
of the initial state. Parameters shared by the ranks get partial gradients on each rank (sum them
over the group, as data parallelism sums over its replicas).
"""

from __future__ import annotations

import torch

from attnzoo.ops.dispatch import op_overrides
from attnzoo.parallel.allscan import AffineScan, apply_map
from attnzoo.parallel.context import SPConfig


def _sum_to(x: torch.Tensor, shape) -> torch.Tensor:
    dims = [i for i, (n, m) in enumerate(zip(x.shape, shape)) if m == 1 and n != 1]
    return x.sum(dims, keepdim=True) if dims else x


def _forward(body, cfg: SPConfig, S0, leaves, *, graph: bool):
    """Shared by the autograd path (graph=True: leaves require grad, graphs are kept) and no-grad."""
    with torch.set_grad_enabled(graph):
        A, Bm, M = body.prepare(*leaves)
    scan = AffineScan(cfg, dense=body.dense, what=body.name)
    first = None if S0 is None or cfg.rank else S0.detach().to(Bm.dtype)
    handle = scan.forward(None if A is None else A.detach(), Bm.detach(), first)
    with torch.set_grad_enabled(graph), op_overrides(None):  # the local pass is the single-device op
        o_local = body.local(*leaves)
    S_in, S_out = handle.wait()
    o = (o_local.to(M.dtype) + torch.einsum("bthk,bhkv->bthv", M.detach(), S_in)).to(o_local.dtype)
    return o, S_out, (A, Bm, M, o_local, S_in, scan)


class ScanFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, body, cfg, S0, *inputs):
        leaves = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in inputs]
        o, S_out, saved = _forward(body, cfg, S0, leaves, graph=True)
        ctx.body, ctx.cfg, ctx.leaves, ctx.saved = body, cfg, leaves, saved
        ctx.S0_grad = S0 is not None and S0.requires_grad
        return o, S_out

    @staticmethod
    def backward(ctx, do, dS_out):
        body, cfg, leaves = ctx.body, ctx.cfg, ctx.leaves
        A, Bm, M, o_local, S_in, scan = ctx.saved
        ctx.saved = None
        dof = do.to(M.dtype)
        dS_out = dS_out.to(Bm.dtype)
        Ad = None if A is None else A.detach()
        dM = torch.einsum("bthv,bhkv->bthk", dof, S_in)
        C = torch.einsum("bthk,bthv->bhkv", M.detach(), dof) + apply_map(Ad, dS_out, dense=body.dense, transpose=True)
        handle = scan.reverse(C)
        want = [i for i, t in enumerate(leaves) if t is not None and t.requires_grad]
        grads = [None] * len(leaves)
        if want and o_local.requires_grad:  # the single-device op's backward, while the scan runs
            g_local = torch.autograd.grad(o_local, [leaves[i] for i in want], do, allow_unused=True)
            for i, g in zip(want, g_local):
                grads[i] = g
        x, dS_in = handle.wait()
        dB = dS_out + x
        outs, gouts = [Bm, M], [dB, dM]
        if A is not None and A.requires_grad:
            dA = dB @ S_in.transpose(-1, -2) if body.dense else _sum_to(dB * S_in, A.shape)
            outs.append(A)
            gouts.append(dA)
        pairs = [(t, g) for t, g in zip(outs, gouts) if t.requires_grad]
        if want and pairs:
            g_prep = torch.autograd.grad([t for t, _ in pairs], [leaves[i] for i in want], [g for _, g in pairs],
                                         allow_unused=True)
            for i, g in zip(want, g_prep):
                if g is not None:
                    grads[i] = g if grads[i] is None else grads[i] + g
        for i in want:
            if grads[i] is not None:
                grads[i] = grads[i].to(leaves[i].dtype)
        dS0 = dS_in if ctx.S0_grad and cfg.rank == 0 else None
        if ctx.S0_grad and dS0 is None:
            dS0 = torch.zeros_like(dS_in)  # the initial state is read on rank 0 only
        return (None, None, dS0, *grads)


def run_scan_op(body, cfg: SPConfig, S0, inputs):
    """(o, S_out) of the sequence-parallel op described by `body` on this rank's shard."""
    needs = [t for t in (*inputs, S0) if t is not None and t.requires_grad]
    if torch.is_grad_enabled() and needs:
        return ScanFunction.apply(body, cfg, S0, *inputs)
    o, S_out, _ = _forward(body, cfg, S0, list(inputs), graph=False)
    return o, S_out
