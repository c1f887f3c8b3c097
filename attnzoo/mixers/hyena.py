"""Hyena: Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon & Ré 2023, "Hyena Hierarchy: Towards
Larger Convolutional Language Models", arXiv:2302.10866.

x [B, T, d_model] -> y [B, T, d_model]; order N (default 2), d = d_model:

    x^1, ..., x^N, v = split(ShortConv(x W_in + b_in))        N+1 streams of width d, causal kernel 3
    z^1 = v;   z^{n+1}_t = x^n_t ⊙ ((h^n * z^n)_t + D^n ⊙ z^n_t)   n = 1..N  (causal long convolution)
    y = z^{N+1} W_out + b_out

i.e. y = x^N ⊙ (h^N * (x^{N-1} ⊙ (h^{N-1} * ... (x^1 ⊙ (h^1 * v))))) (the paper's eq. 3 with its
per-channel skip D), where (h * z)_t = Σ_{i<l_max} h_i ⊙ z_{t-i}. The implicit filters (paper §3.3):

    h^n_t = Window(t) ⊙ FFN(z_t)^n,    z_t = [t/l_max, Re ρ_k(t), Im ρ_k(t)]_{k<K},  ρ_k(t) = exp(i 2πk t/l_max)
    FFN   = Linear(emb_dim, w)·sin, filter_inner_layers × [Linear(w, w)·sin], Linear(w, N·d, no bias)
    Window(t)_c = exp(-α_c t/l_max),  α_c = |ln decay_target| / pct_c,  pct_c linear from slow_decay_pct
                  (channel 0) to fast_decay_pct (channel d-1): channel c has decayed to decay_target at
                  t = pct_c · l_max

emb_dim = 2K+1 (odd, >= 3); sin has a trainable frequency per hidden unit (init sin_freq). The
defaults are those of Zoology's Hyena (HazyResearch/zoology, zoology/mixers/hyena.py, used for its
Figure 2 with l_max = the sequence length) and safari's configs (configs/model/layer/hyena.yaml,
hyena-filter.yaml): filter_order (FFN width) 64, emb_dim 3, two inner FFN layers, sin frequency 1,
short filter 3, fixed decay rates with fast_decay_pct 0.3, slow_decay_pct 1.5, target 1e-2, skip D
~ N(0, 1). Two differences from that code: it gates before each convolution (x^N ⊙ h^{N-1} * (... ⊙
(x^1 ⊙ v)), N-1 filters for order N), while this module follows the paper's recurrence (convolution
then gate, N filters); and its positional features are trainable, fixed here.

Length: the filters have l_max taps (default 2048, the positions normalised by l_max, so h_t does not
depend on T). One call with T > l_max raises ValueError (build with a larger l_max); a state
continuation may go past l_max tokens, and then every token sees the l_max - 1 previous real tokens
of each stream (a sliding receptive field, which the cache holds exactly). A fresh call (no state)
generates only the min(l_max, T+1) taps it can use, so training cost does not grow with l_max.

Decoding keeps `HyenaState`: short [B, W-1, (N+1)·d] (the short conv's last W-1 real inputs) and
long [B, N, l_max-1, d] (each long convolution's last l_max-1 real inputs z^n; zeros at the start).
A step costs O(l_max · d) per stream, plus regenerating all l_max taps of the filters (the FFN,
O(l_max · filter_order^2): at l_max = 2048 the larger part of a step; not cached). Padded steps are
skipped by the convolutions (ops/conv), so they never reach real outputs or the state. Training and
prefill use ops/conv's long convolution (F.conv1d while T <= 64, FFT beyond: O(T log T) per channel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState
from attnzoo.ops.conv import causal_conv1d, long_causal_conv
from attnzoo.ops.conv.api import CONV_PATHS, fft_choice
from attnzoo.registry import Card, Paper, register


@dataclass
class HyenaState(MixerState):
    """short [B, W-1, (N+1)·d_model]: short-conv cache; long [B, N, l_max-1, d_model]: long-conv caches."""

    short: torch.Tensor
    long: torch.Tensor


def hyena_state_bytes(d_model: int, n_heads: int, seq_len: int, order: int = 2, l_max: int = 2048,
                      short_filter_order: int = 3) -> int:
    """fp32 bytes of HyenaState: N long caches of l_max-1 steps and one short cache of W-1 steps."""
    return 4 * d_model * (order * (l_max - 1) + (order + 1) * (short_filter_order - 1))


def positional_features(l_max: int, emb_dim: int, *, length: int | None = None, dtype=torch.float32,
                        device=None) -> torch.Tensor:
    """z [length, emb_dim] for t < length (default l_max): t/l_max, then Re and Im of exp(i 2πk t/l_max)
    for k = 0..K-1 (emb_dim = 2K+1)."""
    t = torch.arange(l_max if length is None else length, dtype=dtype, device=device)[:, None]
    k = torch.arange((emb_dim - 1) // 2, dtype=dtype, device=device)
    angle = 2 * math.pi * k * t / l_max
    return torch.cat([t / l_max, torch.cos(angle), torch.sin(angle)], -1)


class Sin(nn.Module):
    """sin(ω ⊙ x) with a trainable frequency ω per feature."""

    def __init__(self, width: int, freq: float):
        super().__init__()
        self.freq = nn.Parameter(torch.full((width,), float(freq)))

    def forward(self, x):
        return torch.sin(self.freq * x)


class HyenaFilter(nn.Module):
    """The implicit long filters h [n_filters, channels, l_max] = Window ⊙ FFN(positional features)."""

    def __init__(self, channels: int, n_filters: int, l_max: int, *, emb_dim: int = 3, width: int = 64,
                 inner_layers: int = 2, sin_freq: float = 1.0, fast_decay_pct: float = 0.3,
                 slow_decay_pct: float = 1.5, decay_target: float = 1e-2):
        super().__init__()
        self.channels, self.n_filters, self.l_max, self.emb_dim = channels, n_filters, l_max, emb_dim
        self.fast_decay_pct, self.slow_decay_pct, self.decay_target = fast_decay_pct, slow_decay_pct, decay_target
        layers = [nn.Linear(emb_dim, width), Sin(width, sin_freq)]
        for _ in range(inner_layers):
            layers += [nn.Linear(width, width), Sin(width, sin_freq)]
        layers.append(nn.Linear(width, n_filters * channels, bias=False))
        self.ffn = nn.Sequential(*layers)

    def decay_rates(self, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """α [channels]: channel c decays to decay_target at t = pct_c · l_max (pct from slow to fast)."""
        pct = torch.linspace(self.slow_decay_pct, self.fast_decay_pct, self.channels, dtype=dtype, device=device)
        return abs(math.log(self.decay_target)) / pct

    def window(self, length: int | None = None, *, dtype=torch.float32, device=None) -> torch.Tensor:
        """Window [channels, length] = exp(-α_c t / l_max) for t < length (default l_max)."""
        t = torch.arange(self.l_max if length is None else length, dtype=dtype, device=device) / self.l_max
        return torch.exp(-self.decay_rates(dtype=dtype, device=device)[:, None] * t)

    def unmodulated(self, length: int | None = None) -> torch.Tensor:
        """FFN(z_t) as [n_filters, channels, length] (before the window; the first taps of the l_max ones)."""
        w = self.ffn[0].weight
        z = positional_features(self.l_max, self.emb_dim, length=length, dtype=w.dtype, device=w.device)
        return self.ffn(z).view(z.shape[0], self.n_filters, self.channels).permute(1, 2, 0)

    def forward(self, length: int | None = None) -> torch.Tensor:
        """h [n_filters, channels, length]: taps 0..length-1 (default all l_max)."""
        h = self.unmodulated(length)
        return h * self.window(length, dtype=h.dtype, device=h.device)


@register(
    "hyena",
    card=Card(
        title="Hyena: implicit long convolutions (sin-FFN of positions × decay window) interleaved with gating",
        paper=Paper("Hyena Hierarchy: Towards Larger Convolutional Language Models",
                    "Poli et al.", 2023, "2302.10866"),
        family="conv",
        complexity="O(T log T d)",
        state_bytes=hyena_state_bytes,
        causal=True,
        example_kwargs={"filter_order": 16},
    ),
)
class Hyena(Mixer):
    """Order-N Hyena operator over x [B, T, d_model] (see the module docstring for the formulas).

    Args: order N (gates and long filters), l_max (filter taps, the longest single call),
    filter_order (FFN width), emb_dim (2K+1 positional features), filter_inner_layers, sin_freq
    (initial sin frequency), short_filter_order (W), fast/slow_decay_pct and decay_target (the
    window), conv_impl ("auto", "direct" or "fft" for the long convolutions).
    """

    state_class = HyenaState
    state_tag_ignore = ("impl", "conv_impl")  # the convolution's path does not change what a state means

    def __init__(self, d_model: int, *, order: int = 2, l_max: int = 2048, filter_order: int = 64,
                 emb_dim: int = 3, filter_inner_layers: int = 2, sin_freq: float = 1.0,
                 short_filter_order: int = 3, fast_decay_pct: float = 0.3, slow_decay_pct: float = 1.5,
                 decay_target: float = 1e-2, conv_impl: str = "auto"):
        super().__init__(d_model)
        for name, value, low in (("order", order, 1), ("l_max", l_max, 1), ("filter_order", filter_order, 1),
                                 ("filter_inner_layers", filter_inner_layers, 0),
                                 ("short_filter_order", short_filter_order, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if not isinstance(emb_dim, int) or emb_dim < 3 or emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be an odd int >= 3 (t, then Re/Im of K bands: 2K+1), got {emb_dim!r}")
        if not (0 < fast_decay_pct <= slow_decay_pct and math.isfinite(slow_decay_pct)):
            raise ValueError(f"decay percentages must satisfy 0 < fast_decay_pct <= slow_decay_pct < inf, got "
                             f"fast_decay_pct={fast_decay_pct!r}, slow_decay_pct={slow_decay_pct!r}")
        if not 0 < decay_target < 1:
            raise ValueError(f"decay_target must be in (0, 1) (the window's value at the decay point), "
                             f"got {decay_target!r}")
        if not (math.isfinite(sin_freq) and sin_freq != 0):
            raise ValueError(f"sin_freq must be a finite non-zero number, got {sin_freq!r}")
        if conv_impl not in CONV_PATHS:
            raise ValueError(f"conv_impl must be one of {tuple(CONV_PATHS)}, got {conv_impl!r}")
        self.order, self.l_max, self.short_filter_order, self.conv_impl = order, l_max, short_filter_order, conv_impl
        width = (order + 1) * d_model
        self.in_proj = nn.Linear(d_model, width)
        bound = short_filter_order**-0.5  # nn.Conv1d's default init for a depthwise kernel
        self.short_weight = nn.Parameter(torch.empty(width, short_filter_order).uniform_(-bound, bound))
        self.short_bias = nn.Parameter(torch.empty(width).uniform_(-bound, bound))
        self.filter = HyenaFilter(d_model, order, l_max, emb_dim=emb_dim, width=filter_order,
                                  inner_layers=filter_inner_layers, sin_freq=sin_freq, fast_decay_pct=fast_decay_pct,
                                  slow_decay_pct=slow_decay_pct, decay_target=decay_target)
        self.skip = nn.Parameter(torch.randn(order, d_model))  # D^n
        self.out_proj = nn.Linear(d_model, d_model)

    def check_state(self, state: HyenaState):
        ws = (self.short_filter_order - 1, (self.order + 1) * self.d_model)
        wl = (self.order, self.l_max - 1, self.d_model)
        if tuple(state.short.shape[1:]) != ws or tuple(state.long.shape[1:]) != wl:
            raise ValueError(f"HyenaState must hold short [B, {ws[0]}, {ws[1]}] and long [B, {wl[0]}, {wl[1]}, "
                             f"{wl[2]}], got {tuple(state.short.shape)} and {tuple(state.long.shape)}")

    def streams(self, x, mask=None, cache=None, return_cache=False):
        """(gates [x^1..x^N], v, new short cache): the projection through the short causal conv."""
        p, new_cache = causal_conv1d(self.in_proj(x), self.short_weight, self.short_bias, initial_state=cache,
                                     mask=mask, output_final_state=return_cache)
        *gates, v = p.split(self.d_model, -1)
        return gates, v, new_cache

    def _forward(self, x, mask, state, return_state):
        if x.shape[1] > self.l_max:
            raise ValueError(f"Hyena's filters have l_max={self.l_max} taps, but x has T={x.shape[1]} steps: "
                             f"build it with l_max >= {x.shape[1]} (or feed the sequence in pieces with a state)")
        gates, z, short = self.streams(x, mask, None if state is None else state.short, return_state)
        # a fresh sequence needs T taps; T+1 make the cache hold all T inputs (zeros before them, padded below)
        taps = self.l_max if state is not None else min(self.l_max, x.shape[1] + 1)
        h = self.filter(taps)  # [N, d, taps]
        caches = []
        for n in range(self.order):
            c, cache = long_causal_conv(z, h[n], initial_state=None if state is None else state.long[:, n],
                                        mask=mask, output_final_state=return_state, fft=fft_choice(self.conv_impl))
            z = gates[n] * (c + self.skip[n] * z)
            if cache is not None and taps < self.l_max:
                cache = torch.nn.functional.pad(cache, (0, 0, self.l_max - taps, 0))  # the zeros before the start
            caches.append(cache)
        y = self.out_proj(z)
        return y, (HyenaState(short=short, long=torch.stack(caches, 1)) if return_state else None)

    def extra_repr(self):
        return f"d_model={self.d_model}, order={self.order}, l_max={self.l_max}, short={self.short_filter_order}"
