"""Chunked delta rule on torch (placeholder: calls the reference until the WY/UT chunked form lands)."""

from attnzoo.ops.delta.reference import delta_rule_reference as chunk_delta_rule  # noqa: F401
