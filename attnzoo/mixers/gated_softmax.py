"""Gated attention (the G1 output gate): Qiu et al. 2025, "Gated Attention for Large Language
Models: Non-linearity, Sparsity, and Attention-Sink-Free", arXiv:2505.06708.

    Y = SDPA(Q, K, V)            [B, T, h, d_h]
    Y' = Y ⊙ sigmoid(X W_θ)      headwise: W_θ ∈ R^{d × h} (one scalar per head)
                                 elementwise: W_θ ∈ R^{d × h·d_h}
    O = concat_h(Y') W_O

X is the mixer's (pre-normed) input, the same input q_proj sees. As in the official code the gate
is fused into q_proj and split per KV group: q_proj(x).view(B, T, n_kv, -1).split([d_h·g, g·w])
with g = h / n_kv query heads per group and w = 1 (headwise) or d_h (elementwise), so released
checkpoints load unchanged.

The gate multiply is ops/gate's sigmoid_output_gate: on CUDA (gate_impl="auto") one fused Triton
kernel forward and one backward, reading the gate straight from the projection's output (no copy);
gate_impl="torch" is the unfused o · sigmoid(gate).
"""

from __future__ import annotations

from attnzoo.mixers.softmax import SoftmaxAttention, kv_cache_bytes
from attnzoo.ops.gate import sigmoid_output_gate
from attnzoo.registry import Card, Paper, register


@register(
    "gated_softmax",
    card=Card(
        title="Gated attention (G1 sigmoid output gate, headwise or elementwise)",
        paper=Paper("Gated Attention for Large Language Models", "Qiu et al.", 2025, "2505.06708"),
        family="softmax",
        complexity="O(T^2 d)",
        state_bytes=kv_cache_bytes,
        causal=True,
        bidirectional=True,
        example_kwargs={"n_heads": 4, "n_kv_heads": 2, "gate": "elementwise", "qk_norm": True},
    ),
)
class GatedSoftmax(SoftmaxAttention):
    def __init__(self, d_model: int, *, gate: str = "elementwise", gate_impl: str = "auto", **kw):
        if gate not in ("headwise", "elementwise"):
            raise ValueError(f"gate must be 'headwise' or 'elementwise', got {gate!r}")
        self.gate = gate
        self.gate_impl = gate_impl
        super().__init__(d_model, **kw)

    def gate_width(self) -> int:
        return self.head_dim if self.gate == "elementwise" else 1

    def q_width(self) -> int:
        return self.n_heads * (self.head_dim + self.gate_width())

    def split_q(self, qx):
        B, T, _ = qx.shape
        g = self.n_heads // self.n_kv_heads
        grouped = qx.view(B, T, self.n_kv_heads, -1)
        q, gate = grouped.split([self.head_dim * g, self.gate_width() * g], dim=-1)
        q = q.reshape(B, T, self.n_heads, self.head_dim)
        gate = gate.reshape(B, T, self.n_heads, self.gate_width())
        return q, gate

    def gate_output(self, o, gate):
        return sigmoid_output_gate(o, gate, impl=self.gate_impl)

    def extra_repr(self):
        return super().extra_repr() + f", gate={self.gate}"
