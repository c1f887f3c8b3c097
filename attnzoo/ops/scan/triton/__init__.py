"""Triton kernels of the selective scan (importing this needs no triton until a call):

- api.py: the entry point triton_selective_scan (checks, custom op, autograd, vmap rule)
- kernels.py: the forward and backward kernels on the [B, T, D] layout (the state in registers)
"""

from attnzoo.ops.scan.triton.api import triton_scan_supported, triton_selective_scan

__all__ = ["triton_scan_supported", "triton_selective_scan"]
