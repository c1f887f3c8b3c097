"""Convolutions over time: short causal depthwise conv with a decode cache; long FFT conv."""

from attnzoo.ops.conv.long import direct_causal_conv, fft_causal_conv, long_causal_conv
from attnzoo.ops.conv.short import causal_conv1d, compact_real_tokens

__all__ = ["causal_conv1d", "compact_real_tokens", "direct_causal_conv", "fft_causal_conv", "long_causal_conv"]
