"""Per-step sequence classifier over partly missing multivariate series (the setting of deep
self-attention sepsis prediction: one prediction per hour, causally masked, missing values).

Cf. Kaji et al. 2019 ("An attention based deep learning model of clinical events in the intensive
care unit", PLoS ONE) and attention-based sepsis predictors on PhysioNet 2019.

    x [B, T, F] values, observed [B, T, F] bool (True = measured), mask [B, T] bool (True = real step)
    u_t = W [x_t ⊙ observed_t ; observed_t] + b                 (values and missingness indicators)
    h = causal mixer stack(u);   logit_t = wᵀ h_t                 [B, T]

Unobserved values never reach the model (they are multiplied by 0 and only the indicator is seen);
with causal mixers logit_t depends only on steps <= t.
"""

from __future__ import annotations

import torch
from torch import nn

from attnzoo.models.lm import Block, parse_pattern
from attnzoo.models.pretrained import PretrainedMixin, init_config
from attnzoo.mixers.layers import RMSNorm
from attnzoo.registry import build


class SequenceClassifier(PretrainedMixin, nn.Module):
    def __init__(self, n_features: int, d_model: int, n_layers: int = 2, mixer="softmax", *,
                 mixer_kwargs: dict | None = None, n_outputs: int = 1, mlp_ratio: float = 2.0):
        super().__init__()
        self.n_features = n_features
        self.inp = nn.Linear(2 * n_features, d_model)
        mixer_kwargs = mixer_kwargs or {}
        self.blocks = nn.ModuleList(
            Block(build(n, d_model=d_model, **mixer_kwargs.get(n, {})), d_model, mlp_ratio)
            for n in parse_pattern(mixer, n_layers)
        )
        if not all(b.mixer.causal for b in self.blocks):
            raise ValueError("a per-step classifier needs causal mixers (a prediction may not see later steps)")
        self.init_config = init_config(n_features=n_features, d_model=d_model, n_layers=n_layers, mixer=mixer,
                                       mixer_kwargs=mixer_kwargs, n_outputs=n_outputs, mlp_ratio=mlp_ratio)
        self.norm = RMSNorm(d_model)
        self.out = nn.Linear(d_model, n_outputs)

    def forward(self, x, observed, *, mask=None):
        """Returns logits [B, T] (or [B, T, n_outputs] when n_outputs > 1)."""
        if x.dim() != 3 or x.shape[-1] != self.n_features:
            raise ValueError(f"x must be [B, T, {self.n_features}], got {tuple(x.shape)}")
        if observed.dtype != torch.bool or observed.shape != x.shape:
            raise ValueError(f"observed must be bool with the shape of x {tuple(x.shape)}")
        obs = observed.to(x.dtype)
        h = self.inp(torch.cat([torch.where(observed, x, torch.zeros_like(x)), obs], -1))
        for block in self.blocks:
            h, _ = block(h, mask=mask)
        logits = self.out(self.norm(h))
        return logits.squeeze(-1) if logits.shape[-1] == 1 else logits
