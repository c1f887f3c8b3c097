"""Launch arithmetic shared by the Triton ops' host code (no triton import): tile sizes and grid counts."""

from __future__ import annotations

# CUDA grids allow 2^31 - 1 programs on axis 0 but 65,535 on axes 1 and 2: the kernels put their long index
# (sequences x heads) on axis 0; where the batch must sit on axis 1 or 2 the op checks it against this
MAX_GRID_YZ = 65535


def next_pow2(n: int) -> int:
    """The smallest power of two >= max(1, n) (a tile extent: tl.arange needs a power of two)."""
    return 1 << (max(1, int(n)) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive b: the number of tiles of b covering a."""
    return -(-a // b)
