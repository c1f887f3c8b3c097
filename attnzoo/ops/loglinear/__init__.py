"""Log-linear attention (Guo et al. 2025, arXiv:2506.04761): Fenwick-tree level states over Mamba-2 or
gated DeltaNet (api.py: the op; fenwick.py: the partition; reference.py: loop and masked form; chunk.py)."""

from attnzoo.ops.loglinear.api import log_linear_attention
from attnzoo.ops.loglinear.fenwick import LevelState

__all__ = ["log_linear_attention", "LevelState"]
