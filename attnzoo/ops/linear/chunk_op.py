"""The chunked torch gated linear attention (chunk.py) as the custom op `attnzoo::gla_chunk_torch`,
which chunk_gated_linear_attention runs under torch.compile (ops/common/opaque.py says why).

    o, S = torch.ops.attnzoo.gla_chunk_torch(q, k, v, g, g_gamma, initial_state, cu_seqlens, scale,
                                             output_final_state, chunk_size)

The arguments of chunk_gated_linear_attention, positional (scale a float); S is an empty tensor when
output_final_state is False. Registered when attnzoo.ops.linear is imported (its __init__).
"""

from __future__ import annotations

from typing import Optional

import torch

from attnzoo.ops.common.opaque import empty_like_none, fake_grads, fresh, none_if_empty, recompute_grads
from attnzoo.ops.common.precision import compute_dtype
from attnzoo.ops.linear.chunk import chunk_gated_linear_attention

Tensor = torch.Tensor


def _eager(q, k, v, g, g_gamma, initial_state, cu_seqlens, scale, output_final_state, chunk_size):
    return chunk_gated_linear_attention(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                                        output_final_state=output_final_state, cu_seqlens=cu_seqlens,
                                        chunk_size=chunk_size)


@torch.library.custom_op("attnzoo::gla_chunk_torch", mutates_args=())
def gla_chunk_torch(
    q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], g_gamma: Optional[Tensor],  # noqa: UP045
    initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor],  # noqa: UP045
    scale: float, output_final_state: bool, chunk_size: int,
) -> tuple[Tensor, Tensor]:
    o, S = _eager(q, k, v, g, g_gamma, initial_state, cu_seqlens, scale, output_final_state, chunk_size)
    return fresh(o), (fresh(S, initial_state) if S is not None else empty_like_none(q))


@gla_chunk_torch.register_fake
def _(q, k, v, g, g_gamma, initial_state, cu_seqlens, scale, output_final_state, chunk_size):
    B, T, H, K = q.shape
    n = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
    S = (q.new_empty(n, H, K, v.shape[-1], dtype=compute_dtype(q, k, v, g, initial_state)) if output_final_state
         else empty_like_none(q))
    return v.new_empty(B, T, H, v.shape[-1], dtype=q.dtype), S


@torch.library.custom_op("attnzoo::gla_chunk_torch_backward", mutates_args=())
def gla_chunk_torch_backward(
    q: Tensor, k: Tensor, v: Tensor, g: Optional[Tensor], g_gamma: Optional[Tensor],  # noqa: UP045
    initial_state: Optional[Tensor], cu_seqlens: Optional[Tensor],  # noqa: UP045
    scale: float, chunk_size: int, do: Tensor, dS: Optional[Tensor],  # noqa: UP045
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    def fn(q, k, v, g, g_gamma, initial_state):
        return _eager(q, k, v, g, g_gamma, initial_state, cu_seqlens, scale, dS is not None, chunk_size)

    ins = (q, k, v, g, g_gamma, initial_state)
    return tuple(fresh(x, *ins, do, dS) for x in recompute_grads(fn, ins, (do, dS)))


@gla_chunk_torch_backward.register_fake
def _(q, k, v, g, g_gamma, initial_state, cu_seqlens, scale, chunk_size, do, dS):
    return fake_grads(q, q, k, v, g, g_gamma, initial_state)


def _setup_context(ctx, inputs, output):
    q, k, v, g, g_gamma, initial_state, cu_seqlens, scale, _, chunk_size = inputs
    ctx.save_for_backward(q, k, v, g, g_gamma, initial_state, cu_seqlens)
    ctx.scale, ctx.chunk_size = scale, chunk_size


def _backward(ctx, do, dS):
    q, k, v, g, g_gamma, initial_state, cu_seqlens = ctx.saved_tensors
    dS = none_if_empty(dS)
    grads = gla_chunk_torch_backward(q, k, v, g, g_gamma, initial_state, cu_seqlens, ctx.scale, ctx.chunk_size,
                                     do.contiguous(), None if dS is None else dS.contiguous())
    grads = [None if x is None else gx for gx, x in zip(grads, (q, k, v, g, g_gamma, initial_state))]
    return (*grads, None, None, None, None)


gla_chunk_torch.register_autograd(_backward, setup_context=_setup_context)

