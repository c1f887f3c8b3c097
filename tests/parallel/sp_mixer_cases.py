"""Whole mixers (and a hybrid LanguageModel) run sequence-parallel against the same module in one
process, float64: outputs at real positions, gradients of the input and (summed over the ranks) of
every parameter, and the final state on the last rank.

Padded batch: row 0 ends with a stretch of padding as long as a shard (the last rank's final state
comes from earlier ranks); row 1 has a stretch that leaves a shard with fewer real tokens than the
conv's W - 1 (the next shard's halo reaches back two ranks) and a hole.
"""

from __future__ import annotations

import zlib

import torch

import attnzoo
from attnzoo.models import LanguageModel
from attnzoo.parallel import sequence_parallel, shard_bounds

D, T, VOCAB = 32, 17, 29
LINEAR_MIXERS = ("gla", "retnet", "lightning", "hgrn2", "linear", "based", "rwkv6", "mamba2", "deltanet",
                 "gated_deltanet", "lawcat")
HYBRID = "gated_deltanet,sliding_window,mamba2,softmax"


def build(name):
    torch.manual_seed(zlib.crc32(name.encode()))
    if name == "hybrid":
        kw = {"sliding_window": {"n_heads": 2, "window": 5}, "softmax": {"n_heads": 2},
              "gated_deltanet": {"n_heads": 2}, "mamba2": {"head_dim": 16, "d_state": 8}}
        return LanguageModel(VOCAB, D, 4, HYBRID, mixer_kwargs=kw, mlp_ratio=2.0).double()
    return attnzoo.build(name, d_model=D, **attnzoo.get_card(name).example_kwargs).double()


def make_mask(padded: bool):
    if not padded:
        return None
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[0, T - 6:] = False  # the last shard holds no real token: the final state comes from before
    mask[1, 2:8] = False     # a shard with fewer real tokens than the conv's W-1, after real ones
    mask[1, 12] = False
    return mask


def make_inputs(name, padded):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}{padded}".encode()))
    if name == "hybrid":
        x = torch.randint(0, VOCAB, (2, T), generator=gen)
        W = torch.randn(2, T, VOCAB, generator=gen, dtype=torch.float64)
    else:
        x = torch.randn(2, T, D, generator=gen, dtype=torch.float64)
        W = torch.randn(2, T, D, generator=gen, dtype=torch.float64)
    mask = make_mask(padded)
    if mask is not None:
        W = W * mask[..., None]  # only real positions are compared (and carry a gradient)
    return x, mask, W


def _state_tensors(state):
    """The float tensors of a mixer state that sequence parallelism must reproduce on the last rank."""
    if state is None or isinstance(state, list):
        return {}
    return {f: getattr(state, f) for f in ("S", "conv", "shift")
            if isinstance(getattr(state, f, None), torch.Tensor) and getattr(state, f).is_floating_point()}


def run(model, x, mask, W, *, want_state):
    x = x.clone().requires_grad_(x.is_floating_point())
    out = model(x, mask=mask, return_state=want_state)
    y, state = out if want_state else (out, None)
    loss = (y * W).sum()
    params = dict(model.named_parameters())
    wrt = ([x] if x.requires_grad else []) + list(params.values())
    grads = torch.autograd.grad(loss, wrt, allow_unused=True)
    dx = grads[0] if x.requires_grad else None
    pgrads = {n: (torch.zeros_like(p) if g is None else g)
              for (n, p), g in zip(params.items(), grads[len(wrt) - len(params):])}
    states = {k: v.detach() for k, v in _state_tensors(state).items()}
    return {"y": y.detach(), "dx": dx, "params": pgrads, "state": states}


def run_on_rank(rank, world, names):
    out = {}
    for name, padded in names:
        model = build(name)
        x, mask, W = make_inputs(name, padded)
        a, b = shard_bounds(T, world, rank)
        with sequence_parallel(model=model, timeout=30):
            out[(name, padded)] = run(model, x[:, a:b], None if mask is None else mask[:, a:b], W[:, a:b],
                                      want_state=name != "hybrid")
    return out


def truth(name, padded):
    model = build(name)
    x, mask, W = make_inputs(name, padded)
    return {**run(model, x, mask, W, want_state=name != "hybrid"), "mask": mask}
