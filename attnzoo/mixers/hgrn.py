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

Computation: `attnzoo.ops.scan.linear_recurrence` (a log-depth scan; complex products on (Re, Im)
pairs) with a_t = lam_t exp(i theta), b_t = (1 - lam_t) c_t. The state is h, [B, d_h, 2] ([B, d_h, 1]
when real). Padded steps get a = 1, b = 0: they leave h alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers._linear_common import check_recurrent_state, mask_steps
from attnzoo.mixers.base import Mixer, RecurrentState
from attnzoo.ops.scan.linear_recurrence import linear_recurrence
from attnzoo.registry import Card, Paper, register


def hgrn_lower_bounds(n_layers: int) -> list[float]:
    """The paper's per-layer lower bounds gamma^k = cumsum(softmax(Gamma))_k minus the first, at Gamma = 0:
    k / n_layers for layers k = 0 .. n_layers - 1 (0 at the bottom, rising with depth)."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    return [k / n_layers for k in range(n_layers)]


def hgrn_state_bytes(d_model: int, n_heads: int, seq_len: int, expand: int = 1, complex_valued: bool = True) -> int:
    """h [d_h] complex (two fp32 per channel) or real, d_h = expand · d_model."""
    return 4 * expand * d_model * (2 if complex_valued else 1)


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
        claim="Forget gates lower-bounded by a learned value that rises with depth let lower layers model "
              "short-term and upper layers long-term dependencies (shown on language modelling, image "
              "classification and Long Range Arena).",
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
        check_recurrent_state(state, (self.d_hidden, 2 if self.complex_valued else 1))

    def gates(self, x, mask):
        """(log lam, 1 - lam), both [B, T, d_h], without cancellation; lam = 1 and 1 - lam = 0 at padded steps."""
        z, lb = self.mu_proj(x), self.lower_bound
        log_lam = F.logsigmoid(z) if lb == 0.0 else torch.log(lb + (1.0 - lb) * torch.sigmoid(z))
        return mask_steps(log_lam, mask), mask_steps((1.0 - lb) * torch.sigmoid(-z), mask)

    def hidden(self, x, mask, state):
        """h [B, T, d_h, P] (P = 2: Re, Im; P = 1 when real) and the last h [B, d_h, P]."""
        B, T, _ = x.shape
        dh, P = self.d_hidden, 2 if self.complex_valued else 1
        log_lam, k = self.gates(x, mask)                                        # lam = 1, k = 0 at padding
        c = F.silu(self.c_proj(x)).view(B, T, P, dh).transpose(2, 3)           # [B, T, d_h, P]
        b = k[..., None] * c
        lam = log_lam.exp()
        if self.complex_valued:
            th = self.theta.to(lam.dtype)
            a = torch.stack([lam * th.cos(), lam * th.sin()], -1)
            if mask is not None:                                               # a padded step: a = 1 exactly
                a = torch.where(mask[..., None, None], a, torch.tensor([1.0, 0.0], dtype=a.dtype, device=a.device))
            return linear_recurrence(a, b, initial_state=None if state is None else state.S,
                                     complex_pairs=True, impl=self.impl)
        h, hT = linear_recurrence(lam, b[..., 0], initial_state=None if state is None else state.S[..., 0],
                                  impl=self.impl)
        return h[..., None], hT[..., None]

    def _forward(self, x, mask, state, return_state):
        B, T, _ = x.shape
        h, hT = self.hidden(x, mask, state)
        o = h.transpose(2, 3).reshape(B, T, -1).to(x.dtype)                      # [Re h | Im h]
        y = self.o_proj(self.norm(torch.sigmoid(self.g_proj(x)) * o))
        return y, (RecurrentState(S=hT) if return_state else None)

    def extra_repr(self):
        return (f"d_model={self.d_model}, d_hidden={self.d_hidden}, lower_bound={self.lower_bound}, "
                f"complex_valued={self.complex_valued}")
