"""Gated slot attention (GSA): two gated linear-attention passes over m slot memories joined by a softmax."""

from attnzoo.ops.slot.api import gated_slot_attention

__all__ = ["gated_slot_attention"]
