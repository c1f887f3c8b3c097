"""A non-causal encoder stack over any registered mixer.

    enc = Encoder(d_model=64, n_layers=2, mixer="softmax")        # x [B, T, d] -> [B, T, d]

A mixer whose card says it can run bidirectionally is built with causal=False; a causal-only
mixer is wrapped in `Bidirectional` (forward + reversed pass); a non-causal one is used as is.
"""

from __future__ import annotations

from torch import nn

from attnzoo.mixers.bidirectional import Bidirectional
from attnzoo.models.lm import Block, parse_pattern
from attnzoo.models.pretrained import PretrainedMixin, init_config
from attnzoo.registry import build, get_card


def build_encoder_mixer(name: str, d_model: int, **kwargs):
    card = get_card(name)
    if card.bidirectional:
        return build(name, d_model=d_model, causal=False, **kwargs)
    if card.causal:
        return Bidirectional(d_model, mixer=name, merge="sum", mixer_kwargs=kwargs)
    return build(name, d_model=d_model, **kwargs)


class Encoder(PretrainedMixin, nn.Module):
    def __init__(self, d_model: int, n_layers: int, mixer="softmax", *, mixer_kwargs: dict | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        names = parse_pattern(mixer, n_layers)
        mixer_kwargs = mixer_kwargs or {}
        self.init_config = init_config(d_model=d_model, n_layers=n_layers, mixer=mixer, mixer_kwargs=mixer_kwargs,
                                       mlp_ratio=mlp_ratio)
        self.blocks = nn.ModuleList(
            Block(build_encoder_mixer(n, d_model, **mixer_kwargs.get(n, {})), d_model, mlp_ratio) for n in names
        )

    def forward(self, x, *, mask=None):
        for block in self.blocks:
            x, _ = block(x, mask=mask)
        return x
