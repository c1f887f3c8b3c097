"""Triton kernel of the short causal depthwise conv (importing this needs no triton until a call):

- api.py: the entry point triton_short_conv (checks, custom op, autograd)
- kernels.py: the forward and backward kernels on the [B, T, C] layout
"""

from attnzoo.ops.conv.triton.api import MAX_W, triton_short_conv, triton_short_supported

__all__ = ["MAX_W", "triton_short_conv", "triton_short_supported"]
