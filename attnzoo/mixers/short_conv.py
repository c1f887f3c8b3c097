"""ShortConv: the short causal depthwise convolution over time used by the recurrent mixers
(H3, Mamba, DeltaNet, Gated DeltaNet, LAWCAT), as an nn.Module over the shared op
`attnzoo.ops.conv.causal_conv1d`.

    y_t = act( sum_{j=0}^{W-1} w[c, j] · x_{t-W+1+j, c} + b_c )        x, y [B, T, C], w [C, W]

The decode cache [B, W-1, C] holds the last W-1 real inputs; with a mask, padded steps are skipped
(every real output sees the W-1 previous real inputs), so padding never changes real outputs or
the cache. Correct for any T, including T < W and single-token steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attnzoo.ops.conv import causal_conv1d


class ShortConv(nn.Module):
    """Depthwise causal conv over time: forward(x [B,T,C], mask=None, cache=None, output_cache=False)
    -> (y [B,T,C], cache [B, W-1, C] or None)."""

    def __init__(self, channels: int, *, kernel_size: int = 4, activation: str | None = None, bias: bool = False):
        super().__init__()
        if not isinstance(channels, int) or channels <= 0:
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be an int >= 1, got {kernel_size!r}")
        if activation not in (None, "silu"):
            raise ValueError(f"activation must be None or 'silu', got {activation!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.activation = activation
        bound = 1.0 / math.sqrt(kernel_size)  # nn.Conv1d's default for a depthwise conv
        self.weight = nn.Parameter(torch.empty(channels, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound)) if bias else None

    def cache_shape(self, batch: int) -> tuple[int, int, int]:
        return (batch, self.kernel_size - 1, self.channels)

    def check_cache(self, cache: torch.Tensor, batch: int | None = None):
        want = (self.kernel_size - 1, self.channels)
        if not isinstance(cache, torch.Tensor) or cache.dim() != 3 or tuple(cache.shape[1:]) != want:
            got = tuple(cache.shape) if isinstance(cache, torch.Tensor) else type(cache).__name__
            raise ValueError(f"conv cache must be [B, {want[0]}, {want[1]}], got {got}")
        if batch is not None and cache.shape[0] != batch:
            raise ValueError(f"conv cache holds batch size {cache.shape[0]}, but x has batch size {batch}")

    def forward(self, x, *, mask=None, cache=None, output_cache=False):
        if x.dim() != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"x must be [B, T, {self.channels}], got {tuple(x.shape)}")
        if cache is not None:
            self.check_cache(cache, x.shape[0])
        return causal_conv1d(
            x, self.weight, self.bias, initial_state=cache, mask=mask, activation=self.activation,
            output_final_state=output_cache,
        )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, activation={self.activation}"
