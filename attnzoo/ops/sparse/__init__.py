"""Sparse attention ops: block top-k selection (NSA/SSA/Kinetics) and online k-means routing."""

from attnzoo.ops.sparse.block_topk import (
    block_sparse_allowed,
    block_sparse_attention,
    block_sparse_attention_reference,
    pooled_block_keys,
    select_blocks,
)

__all__ = [
    "block_sparse_allowed",
    "block_sparse_attention",
    "block_sparse_attention_reference",
    "pooled_block_keys",
    "select_blocks",
]
