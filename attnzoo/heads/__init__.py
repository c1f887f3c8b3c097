"""Attention used for read-out: label attention, text-conditioned pooling, pointer decoding,
attention pooling over sets, hierarchical encoders."""
