"""Convolutions over time: short causal depthwise conv with a decode cache."""

from attnzoo.ops.conv.short import causal_conv1d, compact_real_tokens

__all__ = ["causal_conv1d", "compact_real_tokens"]
