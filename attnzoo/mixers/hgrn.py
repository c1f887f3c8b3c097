"""HGRN: the hierarchically gated recurrent unit (Qin, Yang & Zhong 2023, "Hierarchically Gated Recurrent
Neural Network for Sequence Modeling", arXiv:2311.04823, NeurIPS 2023).

    mu_t = sigmoid(x_t W_mu + b_mu)                     data-dependent forget gate, element-wise
    lam_t = gamma + (1 - gamma) mu_t                    lower bound gamma in [0, 1), one per layer
    c_t = SiLU(x_t W_cr + b_cr) + i SiLU(x_t W_ci + b_ci)              complex input
    h_t = lam_t ⊙ exp(i theta) ⊙ h_{t-1} + (1 - lam_t) ⊙ c_t            (input gate tied to 1 - lam)
    y_t = W_o LayerNorm( sigmoid(x_t W_g + b_g) ⊙ [Re h_t, Im h_t] )    output gate

theta [d_h] is a learned, data-independent phase (initialised here to RoPE-style frequencies, our
choice). `complex_valued=False` is the paper's real-valued ablation (c real, theta absent, y =
W_o LN(g ⊙ h)). The paper learns the lower bounds of all layers together (cumulative softmax over
layers, rising with depth); a single mixer takes its layer's bound as `lower_bound`, and
`hgrn_lower_bounds(n_layers)` gives that schedule at its initialisation (equal shares: k / n_layers).

Computation: with p_t the index of token t among the call's real tokens, h_t = exp(i p_t theta) u_t where
u_t = lam_t u_{t-1} + (1 - lam_t) exp(-i p_t theta) c_t is a real-gated element-wise recurrence:
`gated_linear_attention` with one head per channel (K = 1, V = 2 for Re/Im), q = 1, k = 1 - lam,
g = log lam (chunked on CPU, Triton on CUDA). The state is h itself, [B, d_h, 1, 2] (V = 1 when real).
Padded steps get lam = 1 and k = 0 and do not advance p.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import check_recurrent_state, mask_steps, recurrent_state_bytes
from attnzoo.mixers.base import Mixer, RecurrentState
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.registry import Card, Paper, register


def hgrn_lower_bounds(n_layers: int) -> list[float]:
    """The paper's per-layer lower bounds gamma^k = cumsum(softmax(Gamma))_k minus the first, at Gamma = 0:
    k / n_layers for layers k = 0 .. n_layers - 1 (0 at the bottom, rising with depth)."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    return [k / n_layers for k in range(n_layers)]


def hgrn_state_bytes(d_model: int, n_heads: int, seq_len: int, expand: int = 1, complex_valued: bool = True) -> int:
    """h [d_h] complex (two fp32 per channel) or real, d_h = expand · d_model."""
    return recurrent_state_bytes(expand * d_model, 1, 2 if complex_valued else 1)


def rotate(z: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """z [..., 2] (Re, Im) times exp(i angle), with cos/sin [...] of the angle."""
    re, im = z[..., 0], z[..., 1]
    return torch.stack([re * cos - im * sin, re * sin + im * cos], -1)


@register(
    "hgrn",
    card=Card(
        title="HGRN (element-wise gated linear recurrence, complex-valued, forget gate with a per-layer lower bound)",
        paper=Paper("Hierarchically Gated Recurrent Neural Network for Sequence Modeling", "Qin, Yang & Zhong",
                    2023, "2311.04823"),
        family="recurrent",
        complexity="O(T d)",
        state_bytes=hgrn_state_bytes,
        example_kwargs={"lower_bound": 0.25},
        claim="Forget gates lower-bounded by a value that rises with depth let lower layers model short and "
              "upper layers long dependencies; HGRN matches Transformers on LM, LRA and ImageNet at linear cost.",
    ),
)
class HGRN(Mixer):
    state_class = RecurrentState

    def __init__(
        self, d_model: int, *, expand: int = 1, lower_bound: float = 0.0, complex_valued: bool = True,
        impl: str = "auto",
    ):
        super().__init__(d_model)
        if not isinstance(expand, int) or expand < 1:
            raise ValueError(f"expand must be a positive int, got {expand!r}")
        if not 0.0 <= lower_bound < 1.0:
            raise ValueError(f"lower_bound must be in [0, 1), got {lower_bound}")
        self.d_hidden = expand * d_model
        self.lower_bound = float(lower_bound)
        self.complex_valued = complex_valued
        self.impl = impl
        dh, parts = self.d_hidden, 2 if complex_valued else 1
        self.mu_proj = nn.Linear(d_model, dh)
        self.c_proj = nn.Linear(d_model, parts * dh)          # [Re | Im] of c
        self.g_proj = nn.Linear(d_model, parts * dh)          # the output gate
        self.norm = nn.LayerNorm(parts * dh)
        self.o_proj = nn.Linear(parts * dh, d_model)
        if complex_valued:
            self.theta = nn.Parameter(10000.0 ** (-torch.arange(dh, dtype=torch.float32) / dh))

    def check_state(self, state):
        check_recurrent_state(state, (self.d_hidden, 1, 2 if self.complex_valued else 1))

    def gates(self, x, mask):
        """(log lam, 1 - lam), both [B, T, d_h], without cancellation; lam = 1 and 1 - lam = 0 at padded steps."""
        z, lb = self.mu_proj(x), self.lower_bound
        log_lam = F.logsigmoid(z) if lb == 0.0 else torch.log(lb + (1.0 - lb) * torch.sigmoid(z))
        return mask_steps(log_lam, mask), mask_steps((1.0 - lb) * torch.sigmoid(-z), mask)

    def phases(self, mask, B, T, device):
        """cos, sin of p_t theta [B, T, d_h] (p_t: index among the call's real tokens) and of the last real
        token's (n - 1) theta [B, d_h] (n = the number of real tokens; -theta when n = 0), angles in float64."""
        real = torch.ones(B, T, dtype=torch.long, device=device) if mask is None else mask.long()
        p = (real.cumsum(1) - 1).clamp_min(0).double()
        ang = p[..., None] * self.theta.double()
        end = (real.sum(1).double()[:, None] - 1) * self.theta.double()
        ct = torch.float64 if self.theta.dtype == torch.float64 else torch.float32
        return ang.cos().to(ct), ang.sin().to(ct), end.cos().to(ct), end.sin().to(ct)

    def hidden(self, x, mask, state, final: bool = True):
        """h [B, T, d_h, 2] (Re, Im; [.., 1] when real) and (if final) the last h as a state [B, d_h, 1, 2]."""
        B, T, _ = x.shape
        dh = self.d_hidden
        log_lam, k = self.gates(x, mask)
        c = F.silu(self.c_proj(x)).view(B, T, 2 if self.complex_valued else 1, dh).transpose(2, 3)
        h0 = None if state is None else state.S[:, :, 0]                        # [B, d_h, 2]
        if self.complex_valued:
            cos, sin, cos_n, sin_n = self.phases(mask, B, T, x.device)
            c = rotate(c, cos.to(c.dtype), -sin.to(c.dtype))                     # exp(-i p theta) c
            if h0 is not None:                                                  # u_{-1} = exp(i theta) h_prev
                th = self.theta.to(h0.dtype)
                h0 = rotate(h0, th.cos(), th.sin())
        ones = torch.ones(B, T, dh, 1, dtype=x.dtype, device=x.device)
        u, uT = gated_linear_attention(ones, k[..., None], c, log_lam, scale=1.0, output_final_state=final,
                                       initial_state=None if h0 is None else h0[:, :, None], impl=self.impl)
        if not self.complex_valued:
            return u, uT
        h = rotate(u, cos.to(u.dtype), sin.to(u.dtype))
        hT = None if uT is None else rotate(uT[:, :, 0], cos_n.to(uT.dtype), sin_n.to(uT.dtype))[:, :, None]
        return h, hT

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        h, hT = self.hidden(x, mask, state, final=return_state)
        o = h.transpose(2, 3).reshape(B, T, -1).to(x.dtype)                      # [Re h | Im h]
        y = self.o_proj(self.norm(torch.sigmoid(self.g_proj(x)) * o))
        return y, (RecurrentState(S=hT) if return_state else None)

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_hidden={self.d_hidden}, lower_bound={self.lower_bound}, "
                f"complex_valued={self.complex_valued}")
