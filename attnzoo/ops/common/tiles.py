"""Launch arithmetic shared by the Triton ops' host code (no triton import): tile sizes and grid counts."""

from __future__ import annotations


def next_pow2(n: int) -> int:
    """The smallest power of two >= max(1, n) (a tile extent: tl.arange needs a power of two)."""
    return 1 << (max(1, int(n)) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for positive b: the number of tiles of b covering a."""
    return -(-a // b)
