"""Row norms of the recurrent mixers (L2 of q / k, gated RMSNorm of the output), unfused and fused (Triton)."""

from attnzoo.ops.norm.api import gated_rms_norm, l2_norm, rms_norm

__all__ = ["gated_rms_norm", "l2_norm", "rms_norm"]
