"""Packed sequences (cu_seqlens) on the paths that have no varlen kernel: one sequence at a time.

cu_seqlens [N + 1] (int, FlashAttention convention) cuts the T tokens of a B == 1 batch into N
sequences; sequence n spans tokens cu_seqlens[n]:cu_seqlens[n + 1], starts from initial_state[n]
and returns its own final state. The result equals N separate calls, outputs concatenated along T
and final states stacked along the first dim.
"""

from __future__ import annotations

import torch


def run_per_sequence(fn, cu_seqlens, per_token, *, initial_state, output_final_state, empty, **kw):
    """(o, final_state) of fn over each packed sequence.

    fn(*per_token_slices, initial_state=..., output_final_state=..., **kw) -> (o, S) is the op on one
    sequence (B == 1); per_token: tensors [1, T, ...] (or None) cut along dim 1; empty() -> (o, S):
    the output [1, 0, ...] and the zero state [1, ...] (compute dtype) of a sequence of no tokens.
    """
    bounds = [int(b) for b in cu_seqlens.tolist()]
    T = next(t for t in per_token if t is not None).shape[1]
    if bounds[0] != 0 or bounds[-1] != T or any(b < a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens must rise from 0 to T = {T}, got {bounds}")
    outs, states = [], []
    for n, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        h0 = None if initial_state is None else initial_state[n:n + 1]
        if hi == lo:  # no tokens: no output, the state passes through
            zero = empty()[1]
            states.append(zero if h0 is None else h0.to(zero.dtype))
            continue
        o, S = fn(*(None if t is None else t[:, lo:hi] for t in per_token), initial_state=h0,
                  output_final_state=output_final_state, **kw)
        outs.append(o)
        states.append(S)
    o = torch.cat(outs, 1) if outs else empty()[0]
    return o, (torch.cat(states, 0) if output_final_state else None)
