"""torch.compile support of the hand-written chunked torch ops: one opaque node instead of a trace.

The chunked ops (ops/linear/chunk.py, ops/delta/chunk.py) are fast on CPU because they run many
small in-place ops, loops over segments and chunks, and one torch.autograd.Function with a
hand-written backward; dynamo cannot trace that as one graph (a data-dependent branch on the
gates, `out=` writes into strided views, Python objects carried from forward to backward), and
inductor would re-derive their layouts. Under torch.compile each op therefore runs as a
torch.library custom op (`attnzoo::gla_chunk_torch`, `attnzoo::delta_chunk_torch`): dynamo sees
one node with a fake (shape-only) implementation, the eager op computes it, and the backward op
recomputes the forward with autograd on and takes the op's own (hand-written) gradients:

    grads = recompute_grads(fn, inputs, grad_outputs)

fn(*inputs) -> tuple of outputs (None allowed); inputs that are floating-point tensors get a
gradient (an empty tensor where there is none: custom ops return no None), the others are passed
as they are. The recomputation costs one more forward per backward (the eager path keeps what
its backward needs instead).
"""

from __future__ import annotations

import torch


def empty_like_none(ref: torch.Tensor) -> torch.Tensor:
    """The stand-in a custom op returns for an absent tensor output (an empty float32 tensor)."""
    return ref.new_empty(0, dtype=torch.float32)


def none_if_empty(t):
    """The inverse of empty_like_none: None for an empty stand-in (or None), else the tensor."""
    return None if t is None or t.numel() == 0 else t


def fresh(t: torch.Tensor, *inputs) -> torch.Tensor:
    """t as a custom op may return it: contiguous, at storage offset 0 (what its fake result is) and
    sharing no storage with inputs (outputs must not alias); copied only if it is not already."""
    ptrs = {x.untyped_storage().data_ptr() for x in inputs if isinstance(x, torch.Tensor) and x.numel()}
    if t.is_contiguous() and t.storage_offset() == 0 and not (t.numel() and t.untyped_storage().data_ptr() in ptrs):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def recompute_grads(fn, inputs, grad_outputs) -> list[torch.Tensor]:
    """Gradients of fn(*inputs)'s outputs (weighted by grad_outputs, None: that output has none)
    with respect to every floating-point tensor input; empty stand-ins for the other inputs."""
    with torch.enable_grad():
        leaves = [x.detach().requires_grad_() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
                  for x in inputs]
        outs = fn(*leaves)
        pairs = [(o, g) for o, g in zip(outs, grad_outputs) if o is not None and g is not None and o.requires_grad]
        wrt = [x for x in leaves if isinstance(x, torch.Tensor) and x.requires_grad]
        got = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True) \
            if pairs and wrt else [None] * len(wrt)
    it = iter(got)
    out = []
    for x in leaves:
        if isinstance(x, torch.Tensor) and x.requires_grad:
            gx = next(it)
            out.append(torch.zeros_like(x) if gx is None else gx)
        else:
            out.append(empty_like_none(grad_outputs[0]))
    return out


def compiling() -> bool:
    """True while dynamo traces the caller (torch.compile); False in eager mode and in a custom op's body."""
    fn = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(fn()) if fn is not None else False


def fake_grads(ref: torch.Tensor, *inputs) -> tuple:
    """The fake (shape-only) result of a backward op over recompute_grads: a contiguous tensor like
    each input, an empty stand-in for a None."""
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) if x is not None else empty_like_none(ref)
                 for x in inputs)
