"""The sequence-parallel recurrent op as one autograd.Function, for any op whose shard is an affine map.

A recurrent op with state S [B, H, K, V] and outputs linear in the state, run on one shard of the
sequence from an incoming state S_in, decomposes as

    o = o_local + M S_in                 (o_local: the shard's output from a zero state; M [B, T, H, K])
    S_out = A S_in + B                   (the shard's map: A diagonal or dense, B its end state from zero)

A `body` supplies two ways to get these (differentiable torch code around the public single-device op):
- `fused(*inputs) -> (o_local, A, B, M)`: one local pass gives everything; then the scan of (A, B)
  across the ranks, then o += M S_in. The default wherever the overlap does not pay.
- `prepare(*inputs) -> (A, B, M)` and `local(*inputs) -> o_local`: the map first, the scan started,
  o_local computed while it runs (ZeCO's overlap; `allscan.overlaps` decides).

Backward, given do and dS_out (the user's gradient on this rank's end state):

    dM = do S_inᵀ,   C = Mᵀ do + Aᵀ dS_out                   (local, before any communication)
    reverse scan:   x = gradient arriving from rank p+1,   dS_in = Aᵀ x + C  (sent to rank p-1)
    then:           dB = dS_out + x,   dA = (dS_out + x) S_inᵀ (diagonal: summed over V)

and the inputs' gradients through (o_local, A, B, M) by autograd (overlapped: o_local's part while the
reverse scan runs). Rank 0's dS_in is the initial state's gradient. Parameters shared by the ranks get
partial gradients on each rank (sum them over the group, as data parallelism sums over replicas).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.dispatch import op_overrides
from attnzoo.parallel.allscan import AffineScan, apply_map, overlaps
from attnzoo.parallel.context import SPConfig


def _sum_to(x: torch.Tensor, shape) -> torch.Tensor:
    dims = [i for i, (n, m) in enumerate(zip(x.shape, shape)) if m == 1 and n != 1]
    return x.sum(dims, keepdim=True) if dims else x


def _forward(body, cfg: SPConfig, S0, leaves, *, graph: bool):
    """Shared by the autograd path (graph=True: leaves require grad, graphs are kept) and no-grad."""
    device = next(t.device for t in leaves if t is not None)
    overlap = overlaps(cfg, device, auto=body.overlap_pays)
    scan = AffineScan(cfg, dense=body.dense, what=body.name, overlap=overlap)
    with torch.set_grad_enabled(graph), op_overrides(None):  # the local pass is the single-device op
        if overlap:
            A, Bm, M = body.prepare(*leaves)
        else:
            o_local, A, Bm, M = body.fused(*leaves)
    first = None if S0 is None or cfg.rank else S0.detach().to(Bm.dtype)
    handle = scan.forward(None if A is None else A.detach(), Bm.detach(), first)
    if overlap:
        with torch.set_grad_enabled(graph), op_overrides(None):
            o_local = body.local(*leaves)
    S_in, S_out = handle.wait()
    o = (o_local.to(M.dtype) + torch.einsum("bthk,bhkv->bthv", M.detach(), S_in)).to(o_local.dtype)
    return o, S_out, (A, Bm, M, o_local, S_in, scan)


def _grad(outputs, grads, inputs):
    pairs = [(t, g) for t, g in zip(outputs, grads) if t is not None and t.requires_grad]
    if not pairs or not inputs:
        return [None] * len(inputs)
    return torch.autograd.grad([t for t, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True)


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
        inputs = [leaves[i] for i in want]
        grads = [None] * len(want)
        if scan.overlap:  # the single-device op's backward while the reverse scan runs
            grads = list(_grad([o_local], [do], inputs))
        x, dS_in = handle.wait()
        dB = dS_out + x
        dA = None
        if A is not None and A.requires_grad:
            dA = dB @ S_in.transpose(-1, -2) if body.dense else _sum_to(dB * S_in, A.shape)
        outs, gouts = [Bm, M, A], [dB, dM, dA]
        if not scan.overlap:  # one graph: everything in one pass
            outs, gouts = [o_local, *outs], [do, *gouts]
        for j, g in enumerate(_grad(outs, gouts, inputs)):
            if g is not None:
                grads[j] = g if grads[j] is None else grads[j] + g
        full = [None] * len(leaves)
        for j, i in enumerate(want):
            full[i] = None if grads[j] is None else grads[j].to(leaves[i].dtype)
        dS0 = None
        if ctx.S0_grad:  # the initial state is read on rank 0 only
            dS0 = dS_in if cfg.rank == 0 else torch.zeros_like(dS_in)
        return (None, None, dS0, *full)


def run_scan_op(body, cfg: SPConfig, S0, inputs):
    """(o, S_out) of the sequence-parallel op described by `body` on this rank's shard."""
    needs = [t for t in (*inputs, S0) if t is not None and t.requires_grad]
    if torch.is_grad_enabled() and needs:
        return ScanFunction.apply(body, cfg, S0, *inputs)
    o, S_out, _ = _forward(body, cfg, S0, list(inputs), graph=False)
    return o, S_out
