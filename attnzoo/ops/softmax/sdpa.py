"""Softmax attention through torch.nn.functional.scaled_dot_product_attention.

`sdpa` is F.scaled_dot_product_attention ([B, H, T, D] layout) that stays one plain call under
torch.func.vmap (many models trained as one: attnzoo.train.group): the vmapped dim is folded into the
batch dim, as the chunked ops do (ops/common/chunk_layout.fold_vmapped). SDPA's own batching rule hands
the CUDA kernels strided views they reject (memory-efficient attention's backward: "LSE is not correctly
aligned (strideB)", seen on an H100 with torch 2.11), so the zoo could not group softmax models.
Under torch.compile the plain call is taken, vmapped or not: dynamo cannot trace the folded Function
(its backward replays an autograd graph built inside its forward) and gave missing and wrong gradients
(tests/ops/test_sdpa_vmap.py); whether SDPA's own batching rule then meets the CUDA stride error above
is not measured."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.chunk_layout import fold_vmapped, unfold_vmapped
from attnzoo.ops.common.opaque import compiling
from attnzoo.ops.softmax.reference import expand_kv


def _is_batched(x) -> bool:
    fn = getattr(getattr(torch._C, "_functorch", None), "is_batchedtensor", None)
    return fn is not None and isinstance(x, torch.Tensor) and bool(fn(x))


class _Graph:
    """The forward's autograd graph (detached leaves and output), carried to the backward."""

    def __init__(self, leaves, out):
        self.leaves, self.out = leaves, out


class _FoldedSDPA(torch.autograd.Function):
    """One SDPA call whose backward reuses the forward's graph (no recomputation); its vmap rule
    folds the vmapped dim into the batch dim. Only taken under vmap."""

    @staticmethod
    def forward(q, k, v, attn_mask, is_causal, scale):
        leaves = [x.detach().requires_grad_(x.requires_grad) for x in (q, k, v)]
        with torch.enable_grad():
            o = F.scaled_dot_product_attention(*leaves, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
        return o.detach(), _Graph(leaves, o)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.graph = output[1]

    @staticmethod
    def backward(ctx, do, _graph):
        graph, ctx.graph = ctx.graph, None
        need = [x for x in graph.leaves if x.requires_grad]
        got = iter(torch.autograd.grad(graph.out, need, do) if need else ())
        return (*(next(got) if x.requires_grad else None for x in graph.leaves), None, None, None)

    @staticmethod
    def vmap(info, in_dims, q, k, v, attn_mask, is_causal, scale):
        G = info.batch_size
        q, k, v, attn_mask = (fold_vmapped(x, d, G) for x, d in zip((q, k, v, attn_mask), in_dims[:4]))
        o, graph = _FoldedSDPA.apply(q, k, v, attn_mask, is_causal, scale)
        return (unfold_vmapped(o, G), graph), (0, None)


def sdpa(q, k, v, *, attn_mask=None, is_causal: bool = False, scale=None):
    """F.scaled_dot_product_attention(q, k, v) for q [B, H, Tq, D], k/v [B, H, Tk, D] (mask broadcastable
    to [B, H, Tq, Tk]); under vmap one call over G·B sequences (see the module docstring)."""
    if compiling() or not any(_is_batched(x) for x in (q, k, v, attn_mask)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)
    if attn_mask is not None:  # its batch dim made q's, so that folding pairs each row with its sequence
        attn_mask = attn_mask.reshape((1,) * (4 - attn_mask.dim()) + tuple(attn_mask.shape))
        attn_mask = attn_mask.expand(q.shape[0], *attn_mask.shape[1:])
    return _FoldedSDPA.apply(q, k, v, attn_mask, is_causal, scale)[0]


def softmax_attention_sdpa(q, k, v, *, allowed, is_causal, scale):
    """Same contract as the reference (allowed bool [B,Tq,Tk] or None; zero rows that see nothing)."""
    Hq = q.shape[2]
    qh = q.transpose(1, 2)
    kh = expand_kv(k, Hq).transpose(1, 2)
    vh = expand_kv(v, Hq).transpose(1, 2)
    if allowed is None:
        return sdpa(qh, kh, vh, is_causal=is_causal, scale=scale).transpose(1, 2)
    seen = allowed.any(-1, keepdim=True)  # [B, Tq, 1]
    safe = allowed | ~seen  # a row that sees nothing attends everywhere, then is zeroed
    o = sdpa(qh, kh, vh, attn_mask=safe[:, None], scale=scale).transpose(1, 2)
    return torch.where(seen[..., None], o, o.new_zeros(()))
