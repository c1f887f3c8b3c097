"""Softmax attention of a sequence-parallel hybrid: all-gather of K/V (not a ring).

Each rank keeps its queries and gathers every rank's keys, values, key positions and key mask
(shards may differ in length), then runs the single-device `softmax_attention` with global
positions, so causal, window, prefix-LM and padding rules apply across shard boundaries unchanged.
The backward sums every rank's gradient for a shard's K/V (an all-reduce; a reduce-scatter would
halve it). Memory and traffic are those of the whole sequence's K/V per rank — the simple choice
for hybrids with a few softmax layers; ring attention would keep one block at a time.
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.dispatch import op_overrides
from attnzoo.parallel.comm import gather_sequence, shard_lengths
from attnzoo.parallel.context import SPConfig


def _as_positions(pos, B, T, start, device):
    if pos is None:
        return (start + torch.arange(T, device=device)).expand(B, T)
    pos = torch.as_tensor(pos, device=device)
    return pos.expand(B, T) if pos.dim() == 1 else pos


def sp_softmax_attention(cfg: SPConfig, q, k, v, *, causal=False, window=None, prefix_len=None, q_pos=None,
                         k_pos=None, key_mask=None, scale=None, return_probs=False, impl="auto"):
    """The override of `softmax_attention`: this rank's queries against every rank's keys."""
    from attnzoo.ops.softmax import softmax_attention

    B, Tq = q.shape[:2]
    Tk = k.shape[1]
    if Tq != Tk:
        raise ValueError(
            f"sequence-parallel softmax attention takes each shard's own keys (Tq == Tk), got Tq={Tq}, Tk={Tk}: "
            "a KV cache (decode state) is not supported under sequence parallelism"
        )
    if return_probs:
        raise ValueError("return_probs is not supported under sequence parallelism")
    lengths = shard_lengths(cfg, Tk, q.device)
    start = sum(lengths[: cfg.rank])
    q_pos = _as_positions(q_pos, B, Tq, start, q.device)
    k_pos = _as_positions(k_pos, B, Tk, start, q.device).long()
    real = torch.ones(B, Tk, dtype=torch.bool, device=q.device) if key_mask is None else key_mask
    k_all = gather_sequence(k, lengths, cfg, "K all-gather")
    v_all = gather_sequence(v, lengths, cfg, "V all-gather")
    pos_all = gather_sequence(k_pos.contiguous(), lengths, cfg, "key positions")
    real_all = gather_sequence(real.to(torch.uint8), lengths, cfg, "key mask").bool()
    with op_overrides(None):
        return softmax_attention(q, k_all, v_all, causal=causal, window=window, prefix_len=prefix_len, q_pos=q_pos,
                                 k_pos=pos_all, key_mask=real_all, scale=scale, impl=impl)
