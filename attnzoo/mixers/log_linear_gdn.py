"""Log-linear Gated DeltaNet (Guo, Yang, Goel, Xing, Dao & Kim 2025, "Log-Linear Attention",
arXiv:2506.04761): Gated DeltaNet (gated_deltanet.py) with its one state replaced by O(log T)
Fenwick-level states that all take the gated delta rule's transition,

    S_t^(l) = alpha_t (I - beta_t k_t k_tᵀ) S_{t-1}^(l) (+ the Fenwick carry),   S_t^(0) = beta_t k_t v_tᵀ
    o_t = sum_l lambda_t^(l) q_tᵀ S_t^(l) / sqrt(d_k)

i.e. the hierarchical mask times Gated DeltaNet's attention matrix, O = (A ⊙ M^S ⊙ M^H) V with A[t, s] =
q_tᵀ (I - beta_t k_t k_tᵀ) ... (I - beta_{s+1} k_{s+1} k_{s+1}ᵀ) beta_s k_s / sqrt(d_k); the levels sum to
Gated DeltaNet's state. level(t, s) = bit_length(t XOR s) (positions count real tokens); lambda_t =
softplus(x_t W_lambda + b) [H, n_levels] (_log_linear_common.py); levels >= n_levels - 1 share the last
weight and one state. Everything else is Gated DeltaNet's (short conv + SiLU, L2 q/k, sigmoid beta, the
Mamba-2 decay, gated RMSNorm). Computed by ops/loglinear (chunked, the UT transform inside a chunk, level
states carried between chunks). State: S [B, H, levels, head_dim, head_dim] with levels = min(n_levels - 1,
bit_length(tokens seen)), growing with log2 T, the count, and the conv cache.
Left out of the paper: its Triton kernels, its experiments' model sizes, and its exact lambda
parametrisation and initialisation (ours: a softplus of one linear map of x_t, about 1 at init).
"""

from __future__ import annotations

from attnzoo.mixers._log_linear_common import (
    LOG_LINEAR,
    LOG_LINEAR_CLAIM,
    LevelRecurrentState,
    LevelWeights,
    check_level_state,
    level_state_bytes,
)
from attnzoo.mixers.gated_deltanet import GatedDeltaNet
from attnzoo.ops.loglinear import log_linear_attention
from attnzoo.registry import Card, register


def log_linear_gdn_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None,
                               conv_kernel: int = 4, n_levels: int = 16) -> int:
    """min(n_levels - 1, bit_length(seq_len)) level states of [H, head_dim, head_dim], the int64 count, and the
    q/k/v short-conv cache (3·H·head_dim channels)."""
    hd = d_model // n_heads if head_dim is None else head_dim
    return level_state_bytes(n_heads, hd, hd, seq_len, n_levels, 3 * n_heads * hd, conv_kernel)


@register(
    "log_linear_gdn",
    card=Card(
        title="Log-linear Gated DeltaNet (gated delta rule on Fenwick-tree level states with data-dependent "
              "level weights)",
        paper=LOG_LINEAR,
        family="linear",
        complexity="O(T log T d^2) training, O(log T d^2) per decoded token",
        state_bytes=log_linear_gdn_state_bytes,
        example_kwargs={"n_heads": 2},
        claim=LOG_LINEAR_CLAIM,
    ),
)
class LogLinearGatedDeltaNet(GatedDeltaNet):
    state_class = LevelRecurrentState

    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, conv_kernel: int = 4,
        n_levels: int = 16, dt_min: float = 1e-3, dt_max: float = 0.1, impl: str = "auto",
    ):
        super().__init__(d_model, n_heads=n_heads, head_dim=head_dim, conv_kernel=conv_kernel, dt_min=dt_min,
                         dt_max=dt_max, impl=impl)
        self.levels = LevelWeights(d_model, self.n_heads, n_levels)
        self.n_levels = n_levels

    def check_state(self, state):
        check_level_state(state, self.n_heads, self.head_dim, self.head_dim, self.n_levels, conv=self.conv)

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        q, k, v, beta, g, conv_cache = self.projections(x, mask, None if state is None else state.conv, return_state)
        impl = "reference" if self.impl == "reference" else "torch"
        o, S = log_linear_attention(
            q, k, v, g, self.levels(x), beta, mask=mask, initial_state=None if state is None else state.levels(),
            output_final_state=return_state, impl=impl, chunk_size=32,
        )
        y = self.o_proj(self.output_norm(o, x).reshape(B, T, -1))
        return y, (LevelRecurrentState(S=S.S, count=S.count, conv=conv_cache) if return_state else None)

    def extra_repr(self):
        return super().extra_repr() + f", n_levels={self.n_levels}"
