"""Sparse attention ops: block top-k selection and attention over the selected blocks (NSA/SSA/Kinetics),
online k-means routing, token merging."""

from attnzoo.ops.sparse.api import block_sparse_attention, block_sparse_decode, block_topk_attention
from attnzoo.ops.sparse.blocks import (
    allowed_keys,
    block_queries,
    candidate_scores,
    pooled_block_keys,
    select_blocks,
    selected_block_mask,
    update_pooled_keys,
)
from attnzoo.ops.sparse.reference import block_sparse_attention_reference, block_sparse_decode_reference

__all__ = [
    "allowed_keys",
    "block_queries",
    "block_sparse_attention",
    "block_sparse_attention_reference",
    "block_sparse_decode",
    "block_sparse_decode_reference",
    "block_topk_attention",
    "candidate_scores",
    "pooled_block_keys",
    "select_blocks",
    "selected_block_mask",
    "update_pooled_keys",
]
