"""Bidirectional wrapper: any causal mixer run forward and on the reversed sequence, then merged.

The construction of Vision-RWKV (Duan et al. 2024, arXiv:2403.02308), RWKV-SAM (Yuan et al. 2024,
arXiv:2406.19369) and bidirectional Mamba (Vision Mamba, Zhu et al. 2024, arXiv:2401.09417;
MambAttention's BiMamba):

    y = merge( f(x), flip(b(flip(x))) )      merge ∈ {sum, mean, concat (then Linear 2d -> d)}

f and b are two instances of the same causal mixer (independent weights, or `shared=True` for one).
x [B, T, d_model] -> y [B, T, d_model]; y_t depends on every token, so the wrapper is non-causal:
it refuses a state. With a padding mask, the sequence *and* the mask are flipped; because the
inner mixer ignores padded steps, the backward pass sees exactly the real tokens in reverse order,
so padding stays invisible (left padding becomes right padding and vice versa).

    bidirectional("mamba", d_model=64, merge="concat", mixer_kwargs={"expand": 4})
    bidirectional(my_causal_mixer, merge="sum")     # the backward copy is a deepcopy
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from attnzoo.mixers.base import Mixer
from attnzoo.registry import Card, Paper, build, register

MERGES = ("sum", "mean", "concat")


class Bidirectional(Mixer):
    causal = False
    state_class = None

    def __init__(self, d_model: int, *, mixer: str | Mixer = "rwkv6", merge: str = "sum", shared: bool = False,
                 mixer_kwargs: dict | None = None):
        super().__init__(d_model)
        if merge not in MERGES:
            raise ValueError(f"merge must be one of {MERGES}, got {merge!r}")
        if isinstance(mixer, Mixer):
            if mixer_kwargs:
                raise ValueError("mixer_kwargs only apply when the mixer is given by name")
            if mixer.d_model != d_model:
                raise ValueError(f"inner mixer has d_model={mixer.d_model}, expected {d_model}")
            fwd = mixer
            bwd = fwd if shared else copy.deepcopy(fwd)
        elif isinstance(mixer, str):
            fwd = build(mixer, d_model=d_model, **(mixer_kwargs or {}))
            bwd = fwd if shared else build(mixer, d_model=d_model, **(mixer_kwargs or {}))
        else:
            raise ValueError(  # noqa: TRY004 (the mixer contract: bad input is a ValueError)
                f"mixer must be a registered name or a Mixer instance, got {type(mixer).__name__}"
            )
        if not fwd.causal:
            raise ValueError(f"the inner mixer must be causal, got non-causal {type(fwd).__name__}")
        self.merge, self.shared = merge, shared
        self.forward_mixer = fwd
        self.backward_mixer = None if shared else bwd
        self.merge_proj = nn.Linear(2 * d_model, d_model) if merge == "concat" else None

    def _forward(self, x, mask, state, return_state):
        inner_b = self.forward_mixer if self.shared else self.backward_mixer
        yf = self.forward_mixer(x, mask=mask)
        aux_f = self.forward_mixer.aux_loss
        yb = inner_b(x.flip(1), mask=None if mask is None else mask.flip(1)).flip(1)
        auxes = [a for a in (aux_f, inner_b.aux_loss) if a is not None]
        self.aux_loss = sum(auxes) if auxes else None
        if self.merge == "sum":
            y = yf + yb
        elif self.merge == "mean":
            y = 0.5 * (yf + yb)
        else:
            y = self.merge_proj(torch.cat([yf, yb], -1))
        return y, None

    def state_bytes(self, seq_len: int) -> int:
        return 0

    def extra_repr(self):
        return f"d_model={self.d_model}, merge={self.merge}, shared={self.shared}"


def bidirectional(mixer_or_name, *, d_model: int | None = None, merge: str = "sum", shared: bool = False,
                  mixer_kwargs: dict | None = None) -> Bidirectional:
    """Turn a causal mixer (an instance, or a registered name plus d_model) into a bidirectional one."""
    if isinstance(mixer_or_name, Mixer):
        d_model = mixer_or_name.d_model if d_model is None else d_model
    elif d_model is None:
        raise ValueError("d_model is required when the mixer is given by name")
    return Bidirectional(d_model, mixer=mixer_or_name, merge=merge, shared=shared, mixer_kwargs=mixer_kwargs)


def no_state(d_model: int, n_heads: int, seq_len: int) -> int:
    return 0


VRWKV = Paper("Vision-RWKV: Efficient and Scalable Visual Perception with RWKV-Like Architectures",
              "Duan et al.", 2024, "2403.02308")
VIM = Paper("Vision Mamba: Efficient Visual Representation Learning with Bidirectional State Space Model",
            "Zhu et al.", 2024, "2401.09417")


@register(
    "bi_rwkv6",
    card=Card(
        title="Bidirectional RWKV-6 (forward + reversed run, merged)",
        paper=VRWKV, family="recurrent", complexity="O(T d K)", state_bytes=no_state,
        causal=False, bidirectional=True, decode=False,
        example_kwargs={"merge": "sum", "mixer_kwargs": {"n_heads": 4, "mix_rank": 4, "decay_rank": 8}},
    ),
)
class BiRWKV6(Bidirectional):
    def __init__(self, d_model: int, *, merge: str = "sum", shared: bool = False, mixer_kwargs: dict | None = None):
        super().__init__(d_model, mixer="rwkv6", merge=merge, shared=shared, mixer_kwargs=mixer_kwargs)


@register(
    "bi_mamba",
    card=Card(
        title="Bidirectional Mamba (forward + reversed run, concatenated and projected)",
        paper=VIM, family="ssm", complexity="O(T d N)", state_bytes=no_state,
        causal=False, bidirectional=True, decode=False,
        example_kwargs={"merge": "concat", "mixer_kwargs": {"d_state": 4, "expand": 2, "chunk_size": 8}},
    ),
)
class BiMamba(Bidirectional):
    def __init__(self, d_model: int, *, merge: str = "concat", shared: bool = False,
                 mixer_kwargs: dict | None = None):
        super().__init__(d_model, mixer="mamba", merge=merge, shared=shared, mixer_kwargs=mixer_kwargs)
