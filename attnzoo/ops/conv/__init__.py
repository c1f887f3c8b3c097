"""Causal depthwise convolutions over time: short (with a decode state) and long (F.conv1d / FFT)."""

from attnzoo.ops.conv.api import causal_conv1d, long_causal_conv
from attnzoo.ops.conv.reference import direct_causal_conv

__all__ = ["causal_conv1d", "direct_causal_conv", "long_causal_conv"]
