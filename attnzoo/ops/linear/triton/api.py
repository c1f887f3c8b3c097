"""Triton gated linear attention: chunked forward/backward and a token-by-token decode kernel.

    o, S = triton_gated_linear_attention(q, k, v, g=None, *, g_gamma=None, scale, initial_state=None,
                                         output_final_state=False, cu_seqlens=None)

q, k [B, T, H, K]; v [B, T, H, V]; g [B, T, H] (scalar gate) or [B, T, H, K] (vector gate), log
space (<= 0); g_gamma [H]; initial_state [N, H, K, V] float32; o [B, T, H, V] in q's dtype;
S [N, H, K, V] float32 (N = B, or the number of packed sequences). V <= 256; K of any size: beyond
128 key channels the op runs as blocks of 128 whose outputs are summed (exact, _split_over_k).

    S_t = diag(exp(g_t + g_gamma)) S_{t-1} + k_t v_tᵀ,     o_t = scale · q_tᵀ S_t

Covers RetNet (Sun et al. 2023, arXiv:2307.08621) and Lightning Attention-2 (Qin et al. 2024,
arXiv:2401.04658) through g_gamma; Mamba-2's scalar decay (Dao & Gu 2024, arXiv:2405.21060);
GLA's per-channel gate (Yang et al. 2023, arXiv:2312.06635). The chunked algorithm is the one of
GLA §3-4 in the numerically safe form of CHUNKED.md (exponents <= 0 as written).

cu_seqlens (int [N + 1], FlashAttention convention, needs B == 1) packs N sequences into T; each
starts from initial_state[n] and returns its own final state.

Under torch.compile the chunked pass is the torch.library custom op `attnzoo::gla_chunk` (forward
`gla_chunk`, backward `gla_chunk_backward`), one opaque node; in eager mode the same kernels run from a
plain autograd.Function (less host time per call). With no gradient needed and T <= DECODE_MAX_T
per sequence, the recurrent kernel (recurrent.py) runs instead. Short sequences (fused.use_fused: at
most fused.FUSED_MAX_T tokens, K, V <= 128, CUDA) run the fused kernels of fused.py inside the same
two functions: one launch forward, one backward (FUSED_MAX_T: 2048 for the scalar gate, off for the vector one).

Precision (H200, bf16 inputs, against a float64 loop): o, S, dq, dk, dv, dh0 ~2-3e-3 relative, dg
4-7e-3; the gradient of g_gamma (a sum of dg over every token, which cancels) is only good to
~0.07 relative in bf16 (H200, T = 4k): use float32 inputs or impl="torch" if g_gamma is trained.
Eager mode keeps the forward's chunk states for the backward (SAVE_STATES). See notes/triton_gla.md.
"""

from __future__ import annotations

from typing import Optional

import torch

from attnzoo.ops.common.checks import check_gla_inputs
from attnzoo.ops.common.dispatch import triton_interpret
from attnzoo.ops.common.opaque import compiling

DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _patch_interpreter_index():
    """Triton 3.6's interpreter turns a runtime scalar into a loop bound with int() of a 1-element
    array, which numpy >= 2.4 refuses; use .item() instead (interpreter only, for CPU tests)."""
    import triton.runtime.interpreter as interp

    if getattr(interp, "_attnzoo_index_patched", False):
        return
    original = interp._patch_lang_tensor

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    interp._patch_lang_tensor = patched
    interp._attnzoo_index_patched = True


if triton_interpret():
    _patch_interpreter_index()
# Key channels of one launch: the scalar-gate dq/dk kernel holds all of K (K = 256 overflowed shared
# memory on the H200). A larger K runs as blocks of at most MAX_K channels (_split_over_k), so K is unbounded.
MAX_K = 128
MAX_V = 256
DECODE_MAX_T = 16


def _limits(q, k, v) -> str | None:
    """What the kernels cannot take in q, k, v (dtypes, head dims), or None: the one statement of
    the limits, read by triton_supported (dispatch) and _check (an explicit impl="triton")."""
    if q.dtype not in DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"needs q, k, v of one dtype in {DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}"
    if v.shape[-1] > MAX_V:
        return f"needs head dim V <= {MAX_V}, got V={v.shape[-1]} (impl='torch' takes any size)"
    return None


def triton_supported(q, k, v, g=None, *, initial_state=None) -> bool:
    """Shapes and dtypes the Triton kernels take (the device is dispatch's business)."""
    return _limits(q, k, v) is None and q.shape[1] > 0


def _check(q, k, v, g, initial_state, cu_seqlens):
    limit = _limits(q, k, v)
    if limit is not None:
        raise ValueError(f"triton gated_linear_attention {limit}")
    if not (q.is_cuda or triton_interpret()):
        raise ValueError("triton gated_linear_attention needs CUDA tensors (or TRITON_INTERPRET=1)")
    if triton_interpret() and not q.is_cuda and q.dtype == torch.bfloat16:
        raise ValueError("Triton 3.6's CPU interpreter multiplies bfloat16 tiles as raw bits in tl.dot (wrong "
                         "results): use float16/float32 there, or impl='torch'")
    check_gla_inputs(q, k, v, g, None, initial_state, cu_seqlens=cu_seqlens)


def _chunk_fwd(q, k, v, g, initial_state, cu_seqlens, batch, scale, output_final_state, keep=None):
    """The chunked forward launches: (o, final state or None); keep as in chunk.chunk_forward. Short
    sequences (fused.use_fused) run the fused one-launch kernel instead (keep then stays empty)."""
    from attnzoo.ops.linear.triton import fused

    if fused.use_fused_for(q, v, g, batch, cu_seqlens):
        out = fused.fused_forward(q, k, v, g, scale=scale, initial_state=initial_state,
                                  output_final_state=output_final_state, batch=batch, cu_seqlens=cu_seqlens)
        if out is not None:  # None: this config does not compile (fused.FAILED)
            return out
    from attnzoo.ops.linear.triton.chunk import chunk_forward, make_tables

    tab = make_tables(q.shape[0], batch, cu_seqlens, q.device)
    return chunk_forward(q, k, v, g, scale=scale, initial_state=initial_state,
                         output_final_state=output_final_state, tab=tab, keep=keep)


def _chunk_bwd(q, k, v, g, initial_state, cu_seqlens, batch, scale, do, dht, saved=None):
    """The chunked backward launches: (dq, dk, dv, dg or None, dh0 or None); fused.use_fused: one launch."""
    from attnzoo.ops.linear.triton import fused

    if fused.use_fused_for(q, v, g, batch, cu_seqlens):
        out = fused.fused_backward(q, k, v, g, do.contiguous(), dht, scale=scale, initial_state=initial_state,
                                   batch=batch, cu_seqlens=cu_seqlens)
        if out is not None:
            return out
    saved = saved or None  # a fused forward kept nothing
    from attnzoo.ops.linear.triton.chunk import chunk_backward, make_tables

    tab = make_tables(q.shape[0], batch, cu_seqlens, q.device)
    return chunk_backward(q, k, v, g, do.contiguous(), dht, scale=scale, initial_state=initial_state, tab=tab,
                          saved=saved)


def _input_grads(dq, dk, dv, dg, dh0, g, initial_state):
    """The autograd return: one entry per input of gla_chunk (None where there is no gradient)."""
    return (dq, dk, dv, dg if g is not None else None, dh0 if initial_state is not None else None,
            None, None, None, None)


@torch.library.custom_op("attnzoo::gla_chunk", mutates_args=())
def gla_chunk(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],  # noqa: UP045
    initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],  # noqa: UP045
    batch: int, scale: float, output_final_state: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    o, ht = _chunk_fwd(q, k, v, g, initial_state, cu_seqlens, batch, scale, output_final_state)
    return o, (ht if ht is not None else q.new_empty(0, dtype=torch.float32))


@gla_chunk.register_fake
def _(q, k, v, g, initial_state, cu_seqlens, batch, scale, output_final_state):
    n = batch if cu_seqlens is None else cu_seqlens.shape[0] - 1
    ht = (q.new_empty(n, q.shape[1], q.shape[2], v.shape[2], dtype=torch.float32) if output_final_state
          else q.new_empty(0, dtype=torch.float32))
    return torch.empty_like(v), ht


@torch.library.custom_op("attnzoo::gla_chunk_backward", mutates_args=())
def gla_chunk_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor],  # noqa: UP045
    initial_state: Optional[torch.Tensor], cu_seqlens: Optional[torch.Tensor],  # noqa: UP045
    batch: int, scale: float, do: torch.Tensor, dht: Optional[torch.Tensor],  # noqa: UP045
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, dg, dh0 = _chunk_bwd(q, k, v, g, initial_state, cu_seqlens, batch, scale, do, dht)
    empty = lambda: q.new_empty(0, dtype=torch.float32)  # noqa: E731 (outputs must not alias)
    return dq, dk, dv, (dg if dg is not None else empty()), (dh0 if dh0 is not None else empty())


@gla_chunk_backward.register_fake
def _(q, k, v, g, initial_state, cu_seqlens, batch, scale, do, dht):
    dg = torch.empty_like(g, dtype=torch.float32) if g is not None else q.new_empty(0, dtype=torch.float32)
    dh0 = torch.empty_like(initial_state) if initial_state is not None else q.new_empty(0, dtype=torch.float32)
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), dg, dh0


def _setup_context(ctx, inputs, output):
    q, k, v, g, initial_state, cu_seqlens, batch, scale, output_final_state = inputs
    ctx.save_for_backward(q, k, v, g, initial_state, cu_seqlens)
    ctx.batch, ctx.scale = batch, scale


def _backward(ctx, do, dht):
    q, k, v, g, initial_state, cu_seqlens = ctx.saved_tensors
    if dht is not None and dht.numel() == 0:
        dht = None
    grads = gla_chunk_backward(q, k, v, g, initial_state, cu_seqlens, ctx.batch, ctx.scale,
                          do, dht.contiguous() if dht is not None else None)
    return _input_grads(*grads, g, initial_state)


gla_chunk.register_autograd(_backward, setup_context=_setup_context)


# Eager mode keeps the forward's chunk states h (input dtype, [chunks, H, K, V]: twice the bytes of
# q), the cumulative gate b and the vector gate's intra-chunk scores for the backward instead of
# recomputing them (one state pass and one cumsum less per backward). False: recompute (less memory).
SAVE_STATES = True


class _EagerGlaChunk(torch.autograd.Function):
    """The same pass as the custom op, for eager mode: the custom op's dispatch and its autograd
    wrapper cost ~1 ms of host time per forward+backward on the H200 (measured), which decided the
    op's speed at 16k tokens (the kernels take ~1.1 ms). torch.compile still sees the custom op
    (which recomputes: its saved tensors would need data-dependent shapes for varlen).

    apply(q, k, v, g, h0, cu, batch, scale, output_final_state, save) -> (o, ht, kept): save keeps
    the forward's chunk states for the backward. Under torch.func.vmap (attnzoo.train.group) the
    vmapped dim is folded into the packed token dim and the batch (sequences are independent)."""

    @staticmethod
    def forward(q, k, v, g, initial_state, cu_seqlens, batch, scale, output_final_state, save):
        keep = {} if save else None
        o, ht = _chunk_fwd(q, k, v, g, initial_state, cu_seqlens, batch, scale, output_final_state, keep=keep)
        return o, ht, keep

    @staticmethod
    def setup_context(ctx, inputs, output):
        _setup_context(ctx, inputs[:9], None)
        ctx.keep = output[2]

    @staticmethod
    def backward(ctx, do, dht, _kept):
        q, k, v, g, initial_state, cu_seqlens = ctx.saved_tensors
        grads = _chunk_bwd(q, k, v, g, initial_state, cu_seqlens, ctx.batch, ctx.scale, do,
                           dht.contiguous() if dht is not None else None, saved=ctx.keep)
        ctx.keep = None
        return (*_input_grads(*grads, g, initial_state), None)

    @staticmethod
    def vmap(info, in_dims, q, k, v, g, initial_state, cu_seqlens, batch, scale, output_final_state, save):
        from attnzoo.ops.common.chunk_layout import fold_vmapped, fold_vmapped_packing, unfold_vmapped

        G = info.batch_size
        if cu_seqlens is not None:
            q, q_dim, cu_seqlens = fold_vmapped_packing(q, in_dims[0], in_dims[5], cu_seqlens, G)
            in_dims = (q_dim, *in_dims[1:])
        q, k, v, g, initial_state = (fold_vmapped(x, d, G) for x, d in zip((q, k, v, g, initial_state), in_dims))
        o, ht, kept = _EagerGlaChunk.apply(q, k, v, g, initial_state, cu_seqlens, batch * G, scale,
                                           output_final_state, save)
        return (unfold_vmapped(o, G), unfold_vmapped(ht, G), kept), (0, None if ht is None else 0, None)


def _split_over_k(q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens):
    """K > MAX_K as blocks of at most MAX_K key channels. Exact: given the gate, row c of the state
    evolves on its own (S_t[c] = e^{g_t[c]} S_{t-1}[c] + k_t[c] v_tᵀ) and o_t = scale · Σ_c q_t[c] S_t[c],
    so o is the sum of the blocks' outputs and the state their concatenation along K (a normaliser
    column of ones in v, api.py's normalize, is summed like any value column). The blocks' outputs
    (each in q's dtype) are summed in float32; autograd sums the gradients of the shared v, g (scalar)
    and g_gamma over the blocks."""
    K = q.shape[-1]
    o_sum, states = None, []
    for lo in range(0, K, MAX_K):
        hi = min(lo + MAX_K, K)
        g_blk = g[..., lo:hi] if (g is not None and g.dim() == 4) else g
        h0 = initial_state[:, :, lo:hi] if initial_state is not None else None
        o, S = triton_gated_linear_attention(
            q[..., lo:hi], k[..., lo:hi], v, g_blk, g_gamma=g_gamma, scale=scale, initial_state=h0,
            output_final_state=output_final_state, cu_seqlens=cu_seqlens)
        o_sum = o.float() if o_sum is None else o_sum + o
        states.append(S)
    return o_sum.to(q.dtype), (torch.cat(states, 2) if output_final_state else None)


def triton_gated_linear_attention(
    q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None,
):
    _check(q, k, v, g, initial_state, cu_seqlens)
    B, T, H, K = q.shape
    V = v.shape[-1]
    scale = K ** -0.5 if scale is None else float(scale)
    if K > MAX_K:
        return _split_over_k(q, k, v, g, g_gamma, scale, initial_state, output_final_state, cu_seqlens)
    gt = None
    if g is not None:
        gt = g.float()
    if g_gamma is not None:
        gg = g_gamma.float()[:, None] if (g is not None and g.dim() == 4) else g_gamma.float()
        gt = gg.expand(B, T, *gg.shape) if gt is None else gt + gg
    packed = lambda x: x.reshape(B * T, *x.shape[2:]).contiguous()  # noqa: E731
    qp, kp, vp = packed(q), packed(k), packed(v)
    gp = packed(gt) if gt is not None else None
    h0 = initial_state.float().contiguous() if initial_state is not None else None
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32) if cu_seqlens is not None else None
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (q, k, v, g, g_gamma, initial_state))
    if not needs_grad and T <= DECODE_MAX_T * (1 if cu is None else cu.shape[0] - 1):
        from attnzoo.ops.linear.triton.recurrent import recurrent_gla_fwd

        if cu is None:
            cu = torch.arange(B + 1, device=q.device, dtype=torch.int32) * T
        o, ht = recurrent_gla_fwd(qp, kp, vp, gp, scale=scale, initial_state=h0,
                                  output_final_state=output_final_state, cu_seqlens=cu, n_seqs=cu.shape[0] - 1)
    elif compiling():
        o, ht = gla_chunk(qp, kp, vp, gp, h0, cu, B, scale, output_final_state)
        ht = ht if output_final_state else None
    else:
        o, ht, _ = _EagerGlaChunk.apply(qp, kp, vp, gp, h0, cu, B, scale, output_final_state,
                                        SAVE_STATES and needs_grad)
    return o.reshape(B, T, H, V), ht
