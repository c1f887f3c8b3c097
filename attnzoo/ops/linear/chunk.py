"""Chunked gated linear attention on torch (placeholder: calls the reference until the chunked form lands)."""

from attnzoo.ops.linear.reference import gated_linear_attention_reference as chunk_gated_linear_attention  # noqa: F401
