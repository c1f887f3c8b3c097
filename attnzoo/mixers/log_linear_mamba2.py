"""Log-linear Mamba-2 (Guo, Yang, Goel, Xing, Dao & Kim 2025, "Log-Linear Attention", arXiv:2506.04761):
Mamba-2 (mamba2.py) with its one state replaced by O(log T) Fenwick-level states,

    O = (C Bᵀ ⊙ M^S ⊙ M^H) (Delta ⊙ X),   M^S[t, s] = prod_{r=s+1..t} exp(a_r),   M^H[t, s] = lambda_t^(level(t, s))
    o_t = sum_l lambda_t^(l) C_tᵀ S_t^(l),   S_t^(0) = B_t (Delta_t x_t)ᵀ,
    S_t^(l) = exp(a_t) S_{t-1}^(l) (after the Fenwick carry)

level(t, s) = bit_length(t XOR s) (0 for s = t; positions count real tokens); lambda_t = softplus(x_t
W_lambda + b) [H, n_levels] per head (_log_linear_common.py); levels >= n_levels - 1 share the last
weight and one state. Everything else is Mamba-2's (short conv on x/B/C, scalar decay per head, D skip,
gated RMSNorm). Computed by ops/loglinear (chunked: intra-chunk masked form, level states carried
between chunks). State: S [B, H, levels, d_state, head_dim] with levels = min(n_levels - 1,
bit_length(tokens seen)), growing with log2 T, the count, and the conv cache.
Left out of the paper: its Triton kernels, the model-level choices of its experiments (layer counts,
widths, its exact lambda parametrisation and initialisation: ours is a softplus of one linear map of
x_t, about 1 at init).
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
from attnzoo.mixers.mamba2 import Mamba2
from attnzoo.ops.loglinear import log_linear_attention
from attnzoo.registry import Card, register

def log_linear_mamba2_state_bytes(d_model: int, n_heads: int, seq_len: int, expand: int = 2, head_dim: int = 64,
                                  d_state: int = 64, conv_kernel: int = 4, n_levels: int = 16) -> int:
    """min(n_levels - 1, bit_length(seq_len)) level states of [d_inner / head_dim, d_state, head_dim],
    the int64 count, and the x/B/C conv cache."""
    d_inner = expand * d_model
    return level_state_bytes(d_inner // head_dim, d_state, head_dim, seq_len, n_levels,
                             d_inner + 2 * d_state, conv_kernel)


@register(
    "log_linear_mamba2",
    card=Card(
        title="Log-linear Mamba-2 (Mamba-2 with Fenwick-tree level states and data-dependent level weights)",
        paper=LOG_LINEAR,
        family="ssm",
        complexity="O(T log T d N) training, O(log T d N) per decoded token",
        state_bytes=log_linear_mamba2_state_bytes,
        example_kwargs={"head_dim": 16, "d_state": 8},
        claim=LOG_LINEAR_CLAIM,
    ),
)
class LogLinearMamba2(Mamba2):
    state_class = LevelRecurrentState

    def __init__(
        self, d_model: int, *, expand: int = 2, head_dim: int = 64, d_state: int = 64, conv_kernel: int = 4,
        n_levels: int = 16, dt_min: float = 1e-3, dt_max: float = 0.1, impl: str = "auto",
    ):
        super().__init__(d_model, expand=expand, head_dim=head_dim, d_state=d_state, conv_kernel=conv_kernel,
                         dt_min=dt_min, dt_max=dt_max, impl=impl)
        self.levels = LevelWeights(d_model, self.n_heads, n_levels)
        self.n_levels = n_levels

    def check_state(self, state):
        check_level_state(state, self.n_heads, self.d_state, self.head_dim, self.n_levels, conv=self.conv)

    def _forward(self, x, mask, state, return_state):
        z, xs, q, k, v, g, conv_cache = self.ssd_inputs(x, mask, None if state is None else state.conv,
                                                        return_state)
        impl = "reference" if self.impl == "reference" else "torch"
        o, S = log_linear_attention(
            q, k, v, g, self.levels(x), mask=mask, scale=1.0,
            initial_state=None if state is None else state.levels(), output_final_state=return_state,
            impl=impl, chunk_size=32,
        )
        y = self.readout(o, xs, z, x.dtype)
        return y, (LevelRecurrentState(S=S.S, count=S.count, conv=conv_cache) if return_state else None)

    def extra_repr(self):
        return super().extra_repr() + f", n_levels={self.n_levels}"
