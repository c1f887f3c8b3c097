"""MesaNet's mesa layer (von Oswald et al. 2025, "MesaNet: Sequence Modeling by Locally Optimal Test-Time
Training", arXiv:2506.05233): per token, the linear map that best fits every key-value pair seen so far.

    G_t = γ_t G_{t-1} + β_t v_t k_tᵀ,   H_t = γ_t H_{t-1} + β_t k_t k_tᵀ
    o_t = G_t (H_t + Λ)^{-1} q_t  = Φ_t q_t,   Φ_t = argmin_Φ ½ Σ_s β_s γ_{s+1..t} |v_s − Φ k_s|² + ½ Tr(Φ Λ Φᵀ)
    γ_t = sigmoid(x_t W_γ + b_γ) (forget),  β_t = sigmoid(x_t W_β + b_β) (input),  Λ = diag(λ_min + softplus(ρ))
    y = W_o ( RMSNorm_h(o) ⊙ SiLU(x W_g) )

As Gated DeltaNet around the recurrence (deltanet.py): q, k, v pass a short causal conv (kernel 4) and
SiLU, q and k are L2-normalised per head, and the output is a SiLU-gated RMSNorm per head. Λ is learned
per head and key channel, kept >= lam_min (0.1, our floor: it bounds the condition number CG faces).
(H_t + Λ)^{-1} q_t is solved, as in the paper, by conjugate gradients with a fixed step count
(ops/mesa: chunked H_t products, CG from zero; `cg_steps` at construction, and `mixer.cg_steps` may be
changed afterwards, e.g. fewer or more steps at inference, without changing what the state means).
x [B, T, d_model]; q, k, v [B, T, H, head_dim]. State: S = [G | H] [B, H, head_dim, 2·head_dim] (G
transposed, [K, V]) and the conv cache. Padded steps get log γ = 0, β = 0, k = v = 0.

Left out: the paper's implicit (CG-solved) backward pass (here the gradient is autograd through the
unrolled CG steps), CG preconditioning and warm starts, a tolerance-driven stopping rule beyond the
machine-precision one, its initialisation of the gates and of Λ (here γ starts in [0.9, 0.999] per head
and λ at 1, our choices), and the Triton/fused kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import check_recurrent_state, recurrent_state_bytes
from attnzoo.mixers.base import RecurrentState
from attnzoo.mixers.deltanet import DeltaNet
from attnzoo.mixers.layers import GatedRMSNorm
from attnzoo.ops.mesa import mesa_attention
from attnzoo.ops.mesa.checks import check_cg_steps
from attnzoo.registry import Card, Paper, register


def mesanet_state_bytes(d_model: int, n_heads: int, seq_len: int, head_dim: int | None = None,
                        conv_kernel: int = 4) -> int:
    """G [H, hd, hd] and H [H, hd, hd] (one [H, hd, 2·hd] tensor) plus the q/k/v short-conv cache."""
    hd = d_model // n_heads if head_dim is None else head_dim
    return recurrent_state_bytes(n_heads, hd, 2 * hd, conv_channels=3 * n_heads * hd, conv_kernel=conv_kernel)


@register(
    "mesanet",
    card=Card(
        title="MesaNet mesa layer (per-token regularised least squares G (H + Λ)^-1 q by conjugate gradients, "
              "forget and input gates, L2 q/k, short conv, gated RMSNorm)",
        paper=Paper("MesaNet: Sequence Modeling by Locally Optimal Test-Time Training", "von Oswald et al.",
                    2025, "2506.05233"),
        family="linear",
        complexity="O(T k d^2)",
        state_bytes=mesanet_state_bytes,
        example_kwargs={"n_heads": 2},
        claim="Solving the in-context regression to optimality at every token (instead of one online gradient "
              "step as in DeltaNet or Mamba) gives lower perplexity than previous RNNs at the billion-parameter "
              "scale, most on long-context tasks, at the price of extra inference flops for the solver.",
    ),
)
class MesaNet(DeltaNet):
    def __init__(
        self, d_model: int, *, n_heads: int = 4, head_dim: int | None = None, conv_kernel: int = 4,
        cg_steps: int = 30, lam_min: float = 0.1, lam_init: float = 1.0, impl: str = "auto",
    ):
        super().__init__(d_model, n_heads=n_heads, head_dim=head_dim, conv_kernel=conv_kernel, impl=impl)
        check_cg_steps(cg_steps)
        if not (lam_min > 0 and lam_init > lam_min):
            raise ValueError(f"need 0 < lam_min < lam_init, got lam_min={lam_min}, lam_init={lam_init}")
        H, D = self.n_heads, self.head_dim
        self.cg_steps = cg_steps
        self.lam_min = lam_min
        self.a_proj = nn.Linear(d_model, H, bias=False)
        gamma0 = torch.empty(H).uniform_(0.9, 0.999)
        self.a_bias = nn.Parameter(torch.log(gamma0) - torch.log1p(-gamma0))  # sigmoid(a_bias) = gamma0
        rho = math.log(math.expm1(lam_init - lam_min))  # softplus(rho) = lam_init - lam_min
        self.lam_raw = nn.Parameter(torch.full((H, D), rho))
        self.g_proj = nn.Linear(d_model, H * D, bias=False)

    def build_output_norm(self):
        self.o_norm = GatedRMSNorm(self.head_dim, eps=1e-5, activation="silu")

    def output_norm(self, o, x):
        B, T, _ = x.shape
        return self.o_norm(o, self.g_proj(x).view(B, T, self.n_heads, self.head_dim))

    def log_gate(self, x):
        """log γ = logsigmoid(x W_γ + b_γ) [B, T, H]."""
        return F.logsigmoid(self.a_proj(x) + self.a_bias.to(x.dtype))

    def regulariser(self):
        """λ [H, head_dim] = lam_min + softplus(ρ), the diagonal of Λ."""
        return self.lam_min + F.softplus(self.lam_raw)

    def check_state(self, state):
        check_recurrent_state(state, (self.n_heads, self.head_dim, 2 * self.head_dim), conv=self.conv)

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        q, k, v, beta, g, conv_cache = self.projections(x, mask, None if state is None else state.conv, return_state)
        o, S = mesa_attention(q, k, v, beta, g, self.regulariser().to(x.dtype),
                              initial_state=None if state is None else state.S, output_final_state=return_state,
                              cg_steps=self.cg_steps, impl=self.impl)
        y = self.o_proj(self.output_norm(o, x).reshape(B, T, -1))
        return y, (RecurrentState(S=S, conv=conv_cache) if return_state else None)

    def extra_repr(self):
        return f"{super().extra_repr()}, cg_steps={self.cg_steps}"
