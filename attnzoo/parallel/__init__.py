"""Sequence parallelism over torch.distributed: one sequence split along T over the ranks of a group.

    import torch.distributed as dist
    from attnzoo.parallel import sequence_parallel, shard

    x_local = shard(x)                               # [B, T, d] -> this rank's [B, T_r, d]
    with sequence_parallel(group, scheme="allscan"):  # every linear mixer / op inside runs over the group
        y_local = model(x_local)                     # = shard(model(x)); backward works the same way
        y_local.sum().backward()                     # (shared parameters: sum their grads over the group)

Under the context the public ops dispatch to their sequence-parallel forms (`ops.common.dispatch.op_override`):
- `gated_linear_attention` and `delta_rule`: local pass from a zero state, All-Scan of the shard maps
  (ZeCO, arXiv:2507.01004; `allscan.py`), the correction o += M S_in, and the reverse scan of dS in
  the backward (`scan_op.py`). Mixers: gla, retnet, lightning, hgrn2, linear, based, rwkv6, mamba2,
  deltanet, gated_deltanet, lawcat.
- the short causal conv and RWKV's token shift: the previous ranks' last real inputs (`halo.py`);
- token positions (RoPE): offset by the real tokens on earlier ranks;
- `softmax_attention` (softmax, gated_softmax, sliding_window, Based's window): all-gather of K/V.

States: `initial_state` (and a mixer's `state`) is read on rank 0; the state returned on rank r is the
state at the end of shard r, so the last rank holds the sequence's final state. Softmax layers take
no KV cache under sequence parallelism, and the one they return holds their rank's shard only (as
RetNet's token count does): sequence parallelism is for training and prefill, not decoding.

Schemes: "allscan" (ZeCO), "ring" (LASP-1: serial, whole state per hop), "allgather" (LASP-2: every
rank's map and state gathered). Every rank must run the same ops in the same order; a peer that
fails makes the others raise SequenceParallelError after `timeout` seconds (gloo; on NCCL the
process group's own timeout applies). Sends are not waited for where they are posted (a rank would
idle until its successor caught up) but at the next scan, on leaving the context, or by
`flush_sends()`: call it at the end of a training step to see a failed peer there. With activation
checkpointing, the recomputation in the backward must also run under the context.
"""

from __future__ import annotations

import contextlib
import functools

import torch

from attnzoo.ops.common.dispatch import op_overrides
from attnzoo.parallel.attention import sp_softmax_attention
from attnzoo.parallel.comm import flush_sends
from attnzoo.parallel.context import SCHEMES, SequenceParallelError, SPConfig
from attnzoo.parallel.delta_map import sp_delta_rule
from attnzoo.parallel.gla import sp_gated_linear_attention
from attnzoo.parallel.halo import conv_cache, position_offset

SUPPORTED_MIXERS = (
    "gla", "retnet", "lightning", "hgrn2", "linear", "based", "rwkv6", "mamba2", "deltanet", "gated_deltanet",
    "lawcat", "softmax", "gated_softmax", "sliding_window",
)


def check_supported(model: torch.nn.Module):
    """Raise ValueError naming the mixers in `model` that have no sequence-parallel form (their ops
    would silently see only the local shard)."""
    bad = sorted({m.registry_name for m in model.modules()
                  if getattr(m, "registry_name", None) and m.registry_name not in SUPPORTED_MIXERS})
    if bad:
        raise ValueError(f"no sequence-parallel form for mixer(s) {', '.join(bad)}; supported: "
                         f"{', '.join(SUPPORTED_MIXERS)}")


@contextlib.contextmanager
def sequence_parallel(group=None, *, scheme: str = "allscan", pieces: int = 4, overlap: bool | None = None,
                      timeout: float = 60.0, model: torch.nn.Module | None = None):
    """Run the ops inside over the ranks of `group` (None: the default group), each rank holding one
    contiguous shard of the sequence, in rank order. overlap: None runs the scan beside the local pass
    on CUDA (a side stream) and before it on CPU; True / False force it (True on CPU: a thread).
    Yields the SPConfig."""
    cfg = SPConfig.make(group, scheme=scheme, pieces=pieces, overlap=overlap, timeout=timeout)
    if model is not None:
        check_supported(model)
    table = {
        "gated_linear_attention": functools.partial(sp_gated_linear_attention, cfg),
        "delta_rule": functools.partial(sp_delta_rule, cfg),
        "softmax_attention": functools.partial(sp_softmax_attention, cfg),
        "conv_cache": functools.partial(conv_cache, cfg),
        "token_positions": functools.partial(position_offset, cfg),
    }
    with op_overrides(table):
        yield cfg
    flush_sends()  # not on an exception: the block's error is the one to see


def shard_bounds(T: int, world: int, rank: int) -> tuple[int, int]:
    """[start, stop) of rank's shard of T steps: equal parts, the first T % world ranks one longer."""
    base, extra = divmod(T, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard(x: torch.Tensor, group=None, *, dim: int = 1) -> torch.Tensor:
    """This rank's contiguous part of x along `dim` (see shard_bounds)."""
    cfg = SPConfig.make(group)
    start, stop = shard_bounds(x.shape[dim], cfg.world, cfg.rank)
    return x.narrow(dim, start, stop - start)


def gated_linear_attention(q, k, v, g=None, *, g_gamma=None, scale=None, initial_state=None,
                           output_final_state=False, normalize=False, impl="auto", group=None,
                           scheme="allscan", pieces=4, overlap=None, timeout=60.0):
    """`attnzoo.ops.linear.gated_linear_attention` over the ranks of `group`; q, k, v, g are this rank's
    shard [B, T_r, ...]. Returns (o [B, T_r, H, V], state at the end of this shard or None)."""
    from attnzoo.ops.linear import gated_linear_attention as op

    with sequence_parallel(group, scheme=scheme, pieces=pieces, overlap=overlap, timeout=timeout):
        return op(q, k, v, g, g_gamma=g_gamma, scale=scale, initial_state=initial_state,
                  output_final_state=output_final_state, normalize=normalize, impl=impl)


def delta_rule(q, k, v, beta, g=None, *, scale=None, initial_state=None, output_final_state=False, impl="auto",
               group=None, scheme="allscan", pieces=4, overlap=None, timeout=60.0):
    """`attnzoo.ops.delta.delta_rule` over the ranks of `group` (as gated_linear_attention above)."""
    from attnzoo.ops.delta import delta_rule as op

    with sequence_parallel(group, scheme=scheme, pieces=pieces, overlap=overlap, timeout=timeout):
        return op(q, k, v, beta, g, scale=scale, initial_state=initial_state,
                  output_final_state=output_final_state, impl=impl)


__all__ = [
    "SCHEMES", "SUPPORTED_MIXERS", "SPConfig", "SequenceParallelError", "check_supported", "delta_rule", "flush_sends",
    "gated_linear_attention", "sequence_parallel", "shard", "shard_bounds",
]
