"""Triton (gated) delta rule: chunked forward/backward and a token-by-token decode kernel.

    o, S = triton_delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None,
                             output_final_state=False, cu_seqlens=None)

q, k [B, T, H, K] (keys L2-normalised); v [B, T, H, V]; beta [B, T, H] in (0, 1); g [B, T, H]
log-space scalar gate (<= 0) or None (DeltaNet); initial_state [N, H, K, V]; o [B, T, H, V] in q's
dtype; S [N, H, K, V] float32 (N = B, or the number of sequences packed by cu_seqlens, B == 1).

    S_t = exp(g_t) (I - β_t k_t k_tᵀ) S_{t-1} + β_t k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

DeltaNet: Yang et al. 2024, arXiv:2406.06484; Gated DeltaNet: Yang, Kautz & Hatamizadeh 2024,
arXiv:2412.06464. The chunked algorithm is CHUNKED.md section 2 (chunk.py lists the launches).

Under torch.compile the chunked pass is the torch.library custom op `attnzoo::delta_chunk`
(backward `attnzoo::delta_chunk_backward`), one opaque node that recomputes the forward's chunk
quantities in its backward; in eager mode the same kernels run from a plain autograd.Function that
keeps them (less host time per call, as for the GLA kernels). With no gradient needed and
T <= DECODE_MAX_T per sequence, the recurrent kernel (recurrent.py) runs instead.
"""

from __future__ import annotations

from typing import Optional

import torch

import attnzoo.ops.linear.triton.api  # noqa: F401  (applies the interpreter patch of Triton 3.6: CPU tests)
from attnzoo.ops.common.checks import check_delta_inputs
from attnzoo.ops.common.chunk_layout import fold_vmapped, fold_vmapped_packing, unfold_vmapped
from attnzoo.ops.common.dispatch import triton_interpret
from attnzoo.ops.common.opaque import compiling

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_K = 128  # the state passes hold all of K in registers
MAX_V = 256
DECODE_MAX_T = 16


def _limits(q, k, v) -> str | None:
    """What the kernels cannot take in q, k, v, or None (read by triton_supported and _check)."""
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"needs q, k, v of one dtype in {DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}"
    if q.shape[-1] > MAX_K or v.shape[-1] > MAX_V:
        return (f"needs head dims K <= {MAX_K} and V <= {MAX_V}, got K={q.shape[-1]}, V={v.shape[-1]} "
                f"(impl='torch' takes any size)")
    return None


def triton_supported(q, k, v) -> bool:
    """Shapes and dtypes the Triton kernels take (the device is dispatch's business)."""
    return _limits(q, k, v) is None and q.shape[1] > 0


def _check(q, k, v, beta, g, initial_state, cu_seqlens):
    limit = _limits(q, k, v)
    if limit is not None:
        raise ValueError(f"triton delta_rule {limit}")
    if not (q.is_cuda or triton_interpret()):
        raise ValueError("triton delta_rule needs CUDA tensors (or TRITON_INTERPRET=1)")
    if triton_interpret() and not q.is_cuda and q.dtype == torch.bfloat16:
        raise ValueError("Triton 3.6's CPU interpreter multiplies bfloat16 tiles as raw bits in tl.dot (wrong "
                         "results): use float16/float32 there, or impl='torch'")
    check_delta_inputs(q, k, v, beta, g, initial_state, cu_seqlens=cu_seqlens)
    if q.shape[1] == 0:
        raise ValueError("triton delta_rule needs T >= 1 (impl='torch' takes empty sequences)")


def _tables(q, batch, cu_seqlens):
    from attnzoo.ops.delta.triton.chunk import make_tables

    return make_tables(q.shape[0], batch, cu_seqlens, q.device)


def _fwd(q, k, v, beta, g, h0, cu, batch, scale, output_final_state, keep=None):
    from attnzoo.ops.delta.triton.chunk import chunk_forward

    return chunk_forward(q, k, v, beta, g, scale=scale, initial_state=h0, output_final_state=output_final_state,
                         tab=_tables(q, batch, cu), keep=keep)


def _bwd(q, k, v, beta, g, h0, cu, batch, scale, do, dht, saved=None):
    from attnzoo.ops.delta.triton.chunk import chunk_backward

    return chunk_backward(q, k, v, beta, g, do.contiguous(), None if dht is None else dht.contiguous(),
                          scale=scale, initial_state=h0, tab=_tables(q, batch, cu), saved=saved)


def _input_grads(dq, dk, dv, dbeta, dg, dh0, g, h0):
    """One entry per input of delta_chunk (None where there is no gradient)."""
    return (dq, dk, dv, dbeta, dg if g is not None else None, dh0 if h0 is not None else None, None, None, None, None)


@torch.library.custom_op("attnzoo::delta_chunk", mutates_args=())
def delta_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: Optional[torch.Tensor],  # noqa: UP045
    initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],  # noqa: UP045
    batch: int, scale: float, output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    o, ht = _fwd(q, k, v, beta, g, initial_state, cu_seqlens, batch, scale, output_final_state)
    return o, (ht if ht is not None else q.new_empty(0, dtype=torch.float32))


@delta_chunk.register_fake
def _(q, k, v, beta, g, initial_state, cu_seqlens, batch, scale, output_final_state):
    n = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = (q.new_empty(n, q.shape[1], q.shape[2], v.shape[2], dtype=torch.float32) if output_final_state
          else q.new_empty(0, dtype=torch.float32))
    return torch.empty_like(v), ht


@torch.library.custom_op("attnzoo::delta_chunk_backward", mutates_args=())
def delta_chunk_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, g: Optional[torch.Tensor],  # noqa: UP045
    initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],  # noqa: UP045
    batch: int, scale: float, do: torch.Tensor, dht: Optional[torch.Tensor],  # noqa: UP045
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, dbeta, dg, dh0 = _bwd(q, k, v, beta, g, initial_state, cu_seqlens, batch, scale, do, dht)
    empty = lambda: q.new_empty(0, dtype=torch.float32)  # noqa: E731 (outputs must not alias)
    return dq, dk, dv, dbeta, (dg if dg is not None else empty()), (dh0 if dh0 is not None else empty())


@delta_chunk_backward.register_fake
def _(q, k, v, beta, g, initial_state, cu_seqlens, batch, scale, do, dht):
    dg = torch.empty_like(g, dtype=torch.float32) if g is not None else q.new_empty(0, dtype=torch.float32)
    dh0 = torch.empty_like(initial_state) if initial_state is not None else q.new_empty(0, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta), dg, dh0


def _setup_context(ctx, inputs, output):
    q, k, v, beta, g, initial_state, cu_seqlens, batch, scale, _ = inputs
    ctx.save_for_backward(q, k, v, beta, g, initial_state, cu_seqlens)
    ctx.batch, ctx.scale = batch, scale


def _backward(ctx, do, dht):
    q, k, v, beta, g, h0, cu = ctx.saved_tensors
    if dht is not None and dht.numel() == 0:
        dht = None
    grads = delta_chunk_backward(q, k, v, beta, g, h0, cu, ctx.batch, ctx.scale, do.contiguous(),
                                 dht.contiguous() if dht is not None else None)
    return _input_grads(*grads, g, h0)


delta_chunk.register_autograd(_backward, setup_context=_setup_context)


class _EagerDeltaChunk(torch.autograd.Function):
    """The custom op's pass for eager mode, keeping the forward's b, Ainv, W, h and V' for the
    backward (no second forward). apply(q, k, v, beta, g, h0, cu, batch, scale, output_final_state)
    -> (o, ht, kept). Under torch.func.vmap (attnzoo.train.group) the vmapped dim is folded into the
    batch (or, packed, into the token dim): sequences are independent."""

    @staticmethod
    def forward(q, k, v, beta, g, initial_state, cu_seqlens, batch, scale, output_final_state):
        keep = {}
        o, ht = _fwd(q, k, v, beta, g, initial_state, cu_seqlens, batch, scale, output_final_state, keep=keep)
        return o, ht, keep

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs, None)
        ctx.keep = output[2]

    @staticmethod
    def backward(ctx, do, dht, _kept):
        q, k, v, beta, g, h0, cu = ctx.saved_tensors
        grads = _bwd(q, k, v, beta, g, h0, cu, ctx.batch, ctx.scale, do, dht, saved=ctx.keep)
        ctx.keep = None  # a second backward through a retained graph recomputes
        return _input_grads(*grads, g, h0)

    @staticmethod
    def vmap(info, in_dims, q, k, v, beta, g, initial_state, cu_seqlens, batch, scale, output_final_state):
        G = info.batch_size
        if cu_seqlens is not None:
            q, q_dim, cu_seqlens = fold_vmapped_packing(q, in_dims[0], in_dims[6], cu_seqlens, G)
            in_dims = (q_dim, *in_dims[1:])
        q, k, v, beta, g, initial_state = (fold_vmapped(x, d, G) for x, d in
                                           zip((q, k, v, beta, g, initial_state), in_dims))
        o, ht, kept = _EagerDeltaChunk.apply(q, k, v, beta, g, initial_state, cu_seqlens, batch * G, scale,
                                             output_final_state)
        return (unfold_vmapped(o, G), unfold_vmapped(ht, G), kept), (0, None if ht is None else 0, None)


def triton_delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False,
                      cu_seqlens=None):
    _check(q, k, v, beta, g, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    packed = lambda x: x.reshape(B * T, *x.shape[2:]).contiguous()  # noqa: E731
    qp, kp, vp, bp = packed(q), packed(k), packed(v), packed(beta)
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32) if cu_seqlens is not None else None
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, beta, g, initial_state))
    if not needs_grad and T <= DECODE_MAX_T * (1 if cu is None else cu.shape[0] - 1):
        from attnzoo.ops.delta.triton.recurrent import recurrent_delta_fwd

        o, ht = recurrent_delta_fwd(qp, kp, vp, bp, None if g is None else packed(g), scale=scale, initial_state=h0,
                                    output_final_state=output_final_state, cu_seqlens=cu,
                                    n_seqs=B if cu is None else cu.shape[0] - 1)
        return o.reshape(B, T, H, V), ht
    gp = packed(g.float()) if g is not None else None
    if compiling():
        o, ht = delta_chunk(qp, kp, vp, bp, gp, h0, cu, B, scale, output_final_state)
        ht = ht if output_final_state else None
    else:
        o, ht, _ = _EagerDeltaChunk.apply(qp, kp, vp, bp, gp, h0, cu, B, scale, output_final_state)
    return o.reshape(B, T, H, V), ht
