"""Partial attention LM mixer: prefix-LM self-attention plus an attention over the source prefix only.

Fu, Lam, Yu, So, Hu, Liu, Collier (2023), "Decoder-Only or Encoder-Decoder? Interpreting Language
Model as a Regularized Encoder-Decoder", arXiv:2304.04052 (the partial attention language model,
PALM, proposed against "attention degeneration": a decoder-only LM's attention on the source fades
as generation goes on).

x [B, T, d_model] = [source prefix (P tokens) ; target] -> y [B, T, d_model]:

    y = W_o SelfAttn(x | prefix-LM mask) + W_o' PartialAttn(q' = x W_q', keys/values = source only)

- SelfAttn: multi-head softmax attention with RoPE, bidirectional over the first P real tokens and
  causal after (k_pos < P or k_pos <= q_pos).
- PartialAttn: a second attention with its own projections whose keys/values are only the P
  source tokens, so every position keeps a direct, undiluted path to the source (no RoPE on it).

`prefix_len` is a constructor argument (P counts real tokens, so padding never moves the prefix).
With prefix_len=0 the mixer is plain causal softmax attention (no partial branch) and decodes
with a KV cache. With prefix_len > 0 it is not causal (outputs inside the prefix see the whole
prefix), so it refuses a state: generation re-runs the whole sequence. PALM's separate positional
encodings and language embeddings belong to the model, not to this mixer, and are not included.
"""

from __future__ import annotations

from torch import nn

from attnzoo.mixers.layers import apply_rope, token_positions
from attnzoo.mixers.softmax import SoftmaxAttention, kv_cache_bytes
from attnzoo.ops.softmax import softmax_attention
from attnzoo.registry import Card, Paper, register

FU_2023 = Paper(
    "Decoder-Only or Encoder-Decoder? Interpreting Language Model as a Regularized Encoder-Decoder",
    "Fu, Lam, Yu, So, Hu, Liu, Collier", 2023, "2304.04052",
)


@register(
    "partial_attention",
    card=Card(
        title="Partial attention LM (prefix-LM self-attention + attention over the source only)",
        paper=FU_2023,
        family="softmax",
        complexity="O(T^2 d)",
        state_bytes=kv_cache_bytes,
        causal=False,
        bidirectional=True,
        decode=False,
        example_kwargs={"n_heads": 4, "prefix_len": 8},
    ),
)
class PartialAttention(SoftmaxAttention):
    """See the module docstring. The card describes prefix_len > 0 (not causal, no decoding)."""

    def __init__(
        self, d_model: int, *, n_heads: int = 4, n_kv_heads: int | None = None, head_dim: int | None = None,
        prefix_len: int = 0, rope: bool = True, rope_theta: float = 10000.0, bias: bool = False, impl: str = "auto",
    ):
        if not isinstance(prefix_len, int) or prefix_len < 0:
            raise ValueError(f"prefix_len must be an int >= 0, got {prefix_len!r}")
        super().__init__(
            d_model, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, causal=True, rope=rope,
            rope_theta=rope_theta, bias=bias, impl=impl,
        )
        self.prefix_len = prefix_len
        self.causal = prefix_len == 0
        width = n_heads * self.head_dim
        self.partial_q = nn.Linear(d_model, width, bias=bias)
        self.partial_k = nn.Linear(d_model, width, bias=bias)
        self.partial_v = nn.Linear(d_model, width, bias=bias)
        self.partial_o = nn.Linear(width, d_model, bias=bias)

    def projections(self, x, mask):
        """q [B,T,H,D], k, v [B,T,Hkv,D] (RoPE applied) and positions [B,T] counting real tokens."""
        B, T, _ = x.shape
        q, _ = self.split_q(self.q_proj(x))
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim)
        pos = token_positions(mask, B, T, None, x.device)
        if self.rope:
            q, k = apply_rope(q, pos, self.rope_theta), apply_rope(k, pos, self.rope_theta)
        return q, k, v, pos

    def _forward(self, x, mask, state, return_state):
        if self.prefix_len == 0:
            return super()._forward(x, mask, state, return_state)
        B, T, _ = x.shape
        q, k, v, pos = self.projections(x, mask)
        o = softmax_attention(
            q, k, v, causal=True, prefix_len=self.prefix_len, q_pos=pos, k_pos=pos, key_mask=mask, impl=self.impl,
        )
        H, D = self.n_heads, self.head_dim
        source = pos < self.prefix_len if mask is None else (pos < self.prefix_len) & mask
        pq = self.partial_q(x).view(B, T, H, D)
        pk = self.partial_k(x).view(B, T, H, D)
        pv = self.partial_v(x).view(B, T, H, D)
        op = softmax_attention(pq, pk, pv, causal=False, key_mask=source, impl=self.impl)
        y = self.o_proj(o.reshape(B, T, H * D)) + self.partial_o(op.reshape(B, T, H * D))
        return y, None

    def extra_repr(self):
        return super().extra_repr() + f", prefix_len={self.prefix_len}"
