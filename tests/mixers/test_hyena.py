"""Hyena (Poli et al. 2023, arXiv:2302.10866) against a plain float64 reference written here.

The reference rebuilds everything from the paper's formulas with the module's own weights: the
positional features z_t = [t/L, cos(2πkt/L), sin(2πkt/L)], the sin-FFN, the exponential window, the
short causal conv as a loop over taps, and every long convolution as an explicit O(T^2) sum over
lags, then the recurrence z^{n+1} = x^n ⊙ (h^n * z^n + D^n ⊙ z^n).
"""

import math

import pytest
import torch

import attnzoo
from attnzoo.mixers.hyena import Hyena, HyenaState, hyena_state_bytes

D = 8


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    m = Hyena(D, **{"l_max": 32, "filter_order": 16, **kw}).double()
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():  # move every parameter off its initial value (Sin frequencies of 1, zero-mean biases)
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.1)
    return m


def reference_filters(m: Hyena) -> torch.Tensor:
    """h [N, d, L] from the formulas: window(t) ⊙ FFN(z_t) with the module's Linear/Sin weights."""
    f, L, N = m.filter, m.l_max, m.order
    K = (f.emb_dim - 1) // 2
    rows = []
    for t in range(L):
        feats = [t / L] + [math.cos(2 * math.pi * k * t / L) for k in range(K)]
        feats += [math.sin(2 * math.pi * k * t / L) for k in range(K)]
        rows.append(feats)
    a = torch.tensor(rows, dtype=torch.float64)
    layers = list(f.ffn)
    for lin, act in zip(layers[:-1:2], layers[1::2]):
        a = torch.sin(act.freq * (a @ lin.weight.T + lin.bias))
    out = (a @ layers[-1].weight.T).view(L, N, D)  # no bias on the last layer
    pct = [f.slow_decay_pct + (f.fast_decay_pct - f.slow_decay_pct) * c / (D - 1) for c in range(D)]
    alpha = torch.tensor([abs(math.log(f.decay_target)) / p for p in pct], dtype=torch.float64)
    window = torch.exp(-alpha[:, None] * torch.arange(L, dtype=torch.float64) / L)  # [d, L]
    return out.permute(1, 2, 0) * window


def reference(m: Hyena, x: torch.Tensor) -> torch.Tensor:
    """y [B, T, d] by loops; a sequence longer than l_max sees the last l_max inputs of each stream."""
    B, T, d = x.shape
    N, W, L = m.order, m.short_filter_order, m.l_max
    p = x @ m.in_proj.weight.T + m.in_proj.bias
    s = torch.zeros_like(p) + m.short_bias
    for t in range(T):
        for j in range(W):  # tap j multiplies p_{t-W+1+j}
            if t - W + 1 + j >= 0:
                s[:, t] = s[:, t] + m.short_weight[:, j] * p[:, t - W + 1 + j]
    streams = s.split(d, -1)
    gates, z = streams[:N], streams[N]
    h = reference_filters(m)
    for n in range(N):
        conv = torch.zeros_like(z)
        for t in range(T):
            for i in range(min(t + 1, L)):
                conv[:, t] = conv[:, t] + h[n, :, i] * z[:, t - i]
        z = gates[n] * (conv + m.skip[n] * z)
    return z @ m.out_proj.weight.T + m.out_proj.bias


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("impl", ["auto", "direct", "fft"])
def test_equals_the_reference(order, impl):
    m = make(order=order, conv_impl=impl)
    x = rand(2, 19, D, seed=order)
    with torch.no_grad():
        torch.testing.assert_close(m(x), reference(m, x), rtol=1e-10, atol=1e-10)


def test_filters_follow_the_formula_and_long_sequences_use_the_fft_path():
    m = make(l_max=96, emb_dim=5, filter_inner_layers=1)
    with torch.no_grad():
        torch.testing.assert_close(m.filter(), reference_filters(m), rtol=1e-12, atol=1e-12)
        x = rand(1, 80, D, seed=4)  # T > 64: "auto" takes the FFT path
        torch.testing.assert_close(m(x), reference(m, x), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(m(x[:, :5]), reference(m, x[:, :5]), rtol=1e-10, atol=1e-10)


def test_gradients_equal_the_reference():
    m = make(order=2)
    x = rand(2, 11, D, seed=5).requires_grad_(True)
    w = rand(2, 11, D, seed=6)
    params = [m.in_proj.weight, m.skip, m.filter.ffn[1].freq, m.filter.ffn[-1].weight, m.short_weight]
    g1 = torch.autograd.grad((m(x) * w).sum(), [x, *params])
    g2 = torch.autograd.grad((reference(m, x) * w).sum(), [x, *params])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_token_by_token_decoding_equals_the_full_sequence(order):
    m = make(order=order)
    x = rand(2, 23, D, seed=7)
    with torch.no_grad():
        full = m(x)
        y, s = m(x[:, :6], return_state=True)
        ys = [y]
        for t in range(6, 23):
            y, s = m(x[:, t : t + 1], state=s, return_state=True)
            ys.append(y)
    torch.testing.assert_close(torch.cat(ys, 1), full, rtol=1e-10, atol=1e-10)
    assert s.short.shape == (2, 2, (order + 1) * D) and s.long.shape == (2, order, 31, D)
    # the short cache holds the last W-1 projected inputs; long[:, 0] the last l_max-1 values of v
    torch.testing.assert_close(s.short, m.in_proj(x[:, -2:]).detach())
    assert torch.equal(s.long[:, 0, :8], torch.zeros(2, 8, D))  # 31 slots, 23 tokens: zeros first


def test_decoding_past_l_max_keeps_a_receptive_field_of_l_max():
    m = make(order=2, l_max=12)
    x = rand(1, 30, D, seed=8)
    with torch.no_grad():
        y, s = m(x[:, :10], return_state=True)
        ys = [y]
        for t in range(10, 30):
            y, s = m(x[:, t : t + 1], state=s, return_state=True)
            ys.append(y)
        ref = reference(m, x)
    torch.testing.assert_close(torch.cat(ys, 1), ref, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="l_max=12"):
        m(x[:, :13])


@pytest.mark.parametrize("T", [1, 11, 12])
def test_a_prefill_of_any_length_continues_like_the_reference(T):
    """A fresh call generates only min(l_max, T+1) taps and pads its caches with the zeros before the start."""
    m = make(order=2, l_max=12)
    x = rand(1, T + 4, D, seed=T)
    with torch.no_grad():
        y1, s = m(x[:, :T], return_state=True)
        y2 = m(x[:, T:], state=s)
        torch.testing.assert_close(torch.cat([y1, y2], 1), reference(m, x), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(m.filter(5), m.filter()[..., :5], rtol=1e-13, atol=1e-15)


def test_window_decays_as_the_modulation_says():
    m = Hyena(D, l_max=100, fast_decay_pct=0.3, slow_decay_pct=1.5, decay_target=1e-2)
    f = m.filter
    with torch.no_grad():
        win = f.window(dtype=torch.float64)
        h, raw = f(), f.unmodulated()
    assert h.shape == raw.shape == (2, D, 100)
    torch.testing.assert_close(h, raw * win.float())
    t = torch.arange(100, dtype=torch.float64)
    torch.testing.assert_close(win[0], torch.exp(-math.log(100) / 1.5 * t / 100))   # slowest channel
    torch.testing.assert_close(win[-1], torch.exp(-math.log(100) / 0.3 * t / 100))  # fastest channel
    assert abs(win[-1, 30].item() - 1e-2) < 1e-12  # the fastest channel reaches the target at 30% of l_max
    assert (win[:, 1:] < win[:, :-1]).all()        # every channel decays with t ...
    assert (win[1:, 1:] < win[:-1, 1:]).all()      # ... and later channels faster
    envelope = raw.abs().amax(-1, keepdim=True) * win.float()
    assert (h.abs() <= envelope + 1e-7).all()
    assert h[..., 60:].abs().max() < 0.2 * h[..., :10].abs().max()


def test_state_bytes_equal_the_state_it_returns():
    for kw, d in (({}, 64), ({"order": 3, "l_max": 16, "short_filter_order": 4}, 8)):
        m = Hyena(d, **kw)
        _, s = m(torch.randn(1, 5, d), return_state=True)
        held = sum(t.numel() * t.element_size() for t in (s.short, s.long))
        assert m.state_bytes(5) == held == m.state_bytes(5000)
    card = attnzoo.get_card("hyena")
    assert card.state_bytes(64, 1, 100) == Hyena(64).state_bytes(100) == hyena_state_bytes(64, 4, 7)
    assert card.family == "conv" and card.paper.arxiv == "2302.10866"


@pytest.mark.parametrize("kw,match", [
    ({"order": 0}, "order"), ({"l_max": 0}, "l_max"), ({"filter_order": 0}, "filter_order"),
    ({"filter_inner_layers": -1}, "filter_inner_layers"), ({"short_filter_order": 0}, "short_filter_order"),
    ({"emb_dim": 4}, "emb_dim"), ({"emb_dim": 1}, "emb_dim"), ({"order": 2.0}, "order"),
    ({"fast_decay_pct": 2.0}, "decay"), ({"fast_decay_pct": 0.0}, "decay"), ({"decay_target": 1.0}, "decay_target"),
    ({"decay_target": 0.0}, "decay_target"), ({"sin_freq": 0.0}, "sin_freq"), ({"conv_impl": "magic"}, "conv_impl"),
])
def test_bad_kwargs_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        Hyena(D, **kw)


def test_a_state_of_the_wrong_shape_is_refused():
    m = make()
    x = rand(2, 4, D)
    bad = HyenaState(short=torch.zeros(2, 2, 3 * D, dtype=torch.float64), long=torch.zeros(2, 2, 30, D,
                                                                                             dtype=torch.float64))
    with pytest.raises(ValueError, match="HyenaState must hold"):
        m(x, state=bad)
