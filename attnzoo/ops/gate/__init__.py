"""Output gates applied to an attention output before the output projection (Gated Attention's G1)."""

from attnzoo.ops.gate.api import sigmoid_output_gate

__all__ = ["sigmoid_output_gate"]
