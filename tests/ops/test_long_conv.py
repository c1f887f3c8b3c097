"""Long causal conv: FFT == direct sum over lags == F.conv1d; state continuation and padding."""

import pytest
import torch
import torch.nn.functional as F

from attnzoo.ops.conv import causal_conv1d, direct_causal_conv, long_causal_conv
from attnzoo.ops.conv.long import _fft_size, fast_causal_conv


def fft_causal_conv(x, k):
    return fast_causal_conv(x, k, fft=True)


def conv1d_causal_conv(x, k):
    return fast_causal_conv(x, k, fft=False)


def rand(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def hand_conv(x, k):
    """y[b,t,c] = sum_i k[c,i] x[b,t-i,c], written with F.conv1d on a left-padded input."""
    L = k.shape[1]
    xp = F.pad(x.transpose(1, 2), (L - 1, 0))
    return F.conv1d(xp, k.flip(-1)[:, None], groups=x.shape[-1]).transpose(1, 2)


@pytest.mark.parametrize("T,L", [(1, 1), (1, 5), (7, 3), (21, 16), (33, 33), (65, 200), (200, 65)])
def test_fft_equals_direct_and_conv1d(T, L):
    x, k = rand(2, T, 5, seed=T), rand(5, L, seed=L + 1)
    ref = hand_conv(x, k)
    assert torch.allclose(direct_causal_conv(x, k), ref, atol=1e-12)
    assert torch.allclose(fft_causal_conv(x, k), ref, atol=1e-10)
    assert torch.allclose(conv1d_causal_conv(x, k), ref, atol=1e-12)
    for n_out in {1, T // 2 + 1, T}:
        assert torch.allclose(fast_causal_conv(x, k, fft=True, n_out=n_out), ref[:, T - n_out :], atol=1e-10)
        assert torch.allclose(fast_causal_conv(x, k, fft=False, n_out=n_out), ref[:, T - n_out :], atol=1e-12)


def test_direct_path_is_exactly_causal_fft_only_up_to_rounding():
    x, k = rand(1, 40, 3, seed=20), rand(3, 40, seed=21)
    x2 = x.clone()
    x2[:, 20:] = rand(1, 20, 3, seed=22) * 100
    d1, d2 = conv1d_causal_conv(x, k), conv1d_causal_conv(x2, k)
    assert torch.equal(d1[:, :20], d2[:, :20])
    f1, f2 = fft_causal_conv(x, k), fft_causal_conv(x2, k)
    assert (f1[:, :20] - f2[:, :20]).abs().max() < 1e-11 * f2.abs().max()


def test_fft_float32_and_bfloat16_tolerances():
    x, k = rand(2, 100, 4, seed=3), rand(4, 100, seed=4) / 10
    ref = direct_causal_conv(x, k)
    y32 = fft_causal_conv(x.float(), k.float())
    assert y32.dtype == torch.float32
    assert (y32.double() - ref).abs().max() < 1e-5 * ref.abs().max()
    y16 = fft_causal_conv(x.bfloat16(), k.bfloat16())
    assert y16.dtype == torch.bfloat16
    assert (y16.double() - ref).abs().max() < 3e-2 * ref.abs().max()


def test_fft_size_is_at_least_2T():
    for T in (1, 2, 3, 64, 65, 1000):
        n = _fft_size(T)
        assert n >= 2 * T and n & (n - 1) == 0


def test_fft_gradient_matches_direct():
    x, k = rand(2, 19, 3, seed=5).requires_grad_(), rand(3, 11, seed=6).requires_grad_()
    w = rand(2, 19, 3, seed=7)
    gx1, gk1 = torch.autograd.grad((fft_causal_conv(x, k) * w).sum(), (x, k))
    gx2, gk2 = torch.autograd.grad((direct_causal_conv(x, k) * w).sum(), (x, k))
    assert torch.allclose(gx1, gx2, atol=1e-10) and torch.allclose(gk1, gk2, atol=1e-10)


PATHS = {"fft": {"fft": True}, "direct": {"fft": False}, "auto": {}, "reference": {"impl": "reference"}}


@pytest.mark.parametrize("path", PATHS)
def test_state_continuation_token_by_token(path):
    kw = PATHS[path]
    x, k = rand(2, 23, 4, seed=8), rand(4, 9, seed=9)
    full, _ = long_causal_conv(x, k, **kw)
    assert torch.allclose(full, hand_conv(x, k), atol=1e-10)
    y1, c = long_causal_conv(x[:, :5], k, output_final_state=True, **kw)
    ys = [y1]
    for t in range(5, 23):
        y, c = long_causal_conv(x[:, t : t + 1], k, initial_state=c, output_final_state=True, **kw)
        ys.append(y)
    assert torch.allclose(torch.cat(ys, 1), full, atol=1e-10)
    assert torch.equal(c, x[:, -8:])


def test_long_conv_equals_short_conv_op_with_flipped_kernel():
    x, k = rand(2, 15, 3, seed=10), rand(3, 6, seed=11)
    m = torch.ones(2, 15, dtype=torch.bool)
    m[0, :4] = False
    m[1, 10:] = False
    y1, c1 = long_causal_conv(x, k, mask=m, output_final_state=True)
    y2, c2 = causal_conv1d(x, k.flip(-1), mask=m, output_final_state=True)
    assert torch.allclose(y1[m], y2[m], atol=1e-10) and torch.allclose(c1, c2)
    bias, h0 = rand(3, seed=16), rand(2, 5, 3, seed=17)
    y3, c3 = causal_conv1d(x, k.flip(-1), bias, initial_state=h0, mask=m, output_final_state=True, impl="reference")
    y4, c4 = causal_conv1d(x, k.flip(-1), bias, initial_state=h0, mask=m, output_final_state=True)
    assert torch.allclose(y3, y4, atol=1e-10) and torch.equal(c3, c4)


def test_padding_never_changes_real_outputs_or_cache():
    x, k = rand(1, 12, 3, seed=12), rand(3, 5, seed=13)
    y, c = long_causal_conv(x, k, output_final_state=True)
    xp = torch.cat([rand(1, 3, 3, seed=14) * 9, x[:, :6], rand(1, 2, 3, seed=15) * 9, x[:, 6:]], 1)
    m = torch.ones(1, 17, dtype=torch.bool)
    m[0, :3] = False
    m[0, 9:11] = False
    yp, cp = long_causal_conv(xp, k, mask=m, output_final_state=True)
    assert torch.allclose(yp[m].view(1, 12, 3), y, atol=1e-10) and torch.allclose(cp, c)


def test_bad_shapes_raise():
    x = rand(2, 5, 3)
    with pytest.raises(ValueError, match="kernel"):
        fft_causal_conv(x, rand(4, 5))
    with pytest.raises(ValueError, match="initial_state"):
        long_causal_conv(x, rand(3, 5), initial_state=rand(2, 3, 3))
    with pytest.raises(ValueError, match="impl"):
        long_causal_conv(x, rand(3, 5), impl="magic")
    with pytest.raises(ValueError, match="fft"):
        long_causal_conv(x, rand(3, 5), fft="yes")
    with pytest.raises(ValueError, match="initial_state"):
        causal_conv1d(x, rand(3, 4), initial_state=rand(2, 2, 3))


@pytest.mark.parametrize("T,L", [(1, 1), (7, 3), (21, 16), (33, 33), (40, 90)])
def test_toeplitz_direct_form_equals_conv1d_with_gradients(monkeypatch, T, L):
    """LONG_CONV_DIRECT = "toeplitz": the same sums as one matmul per channel: outputs (every n_out) and the
    gradients of x and the kernel equal F.conv1d's; exactly causal (a later input moves no earlier output)."""
    import attnzoo.ops.conv.long as long_mod

    x, k = rand(2, T, 5, seed=T), rand(5, L, seed=L + 1)
    ref = hand_conv(x, k[:, :T])
    dy = rand(2, T, 5, seed=3)
    monkeypatch.setattr(long_mod, "LONG_CONV_DIRECT", "toeplitz")
    for n_out in {1, T // 2 + 1, T}:
        assert torch.allclose(fast_causal_conv(x, k, fft=False, n_out=n_out), ref[:, T - n_out:], atol=1e-12)
    grads = []
    for path in ("toeplitz", "conv1d"):
        monkeypatch.setattr(long_mod, "LONG_CONV_DIRECT", path)
        xl, kl = x.clone().requires_grad_(), k.clone().requires_grad_()
        grads.append(torch.autograd.grad((fast_causal_conv(xl, kl, fft=False) * dy).sum(), [xl, kl]))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-11)
    monkeypatch.setattr(long_mod, "LONG_CONV_DIRECT", "toeplitz")
    x2 = x.clone()
    x2[:, -1] += 1.0
    assert torch.equal(fast_causal_conv(x2, k, fft=False)[:, :-1], fast_causal_conv(x, k, fft=False)[:, :-1])


def test_toeplitz_under_vmap_with_a_kernel_per_member(monkeypatch):
    """The zoo's groups (torch.func.vmap over members, each its own kernel) through the Toeplitz form."""
    import attnzoo.ops.conv.long as long_mod

    monkeypatch.setattr(long_mod, "LONG_CONV_DIRECT", "toeplitz")
    x, k = rand(3, 2, 11, 4, seed=5), rand(3, 4, 11, seed=6)
    got = torch.func.vmap(lambda x, k: fast_causal_conv(x, k, fft=False))(x, k)
    assert torch.allclose(got, torch.stack([hand_conv(x[i], k[i]) for i in range(3)]), atol=1e-12)


def test_toeplitz_switch_falls_back_past_its_length_and_refuses_unknown_words(monkeypatch):
    import attnzoo.ops.conv.long as long_mod

    called = []
    monkeypatch.setattr(long_mod, "_toeplitz_conv", lambda *a: called.append(1))
    monkeypatch.setattr(long_mod, "LONG_CONV_DIRECT", "toeplitz")
    monkeypatch.setattr(long_mod, "TOEPLITZ_MAX_T", 8)
    x, k = rand(1, 9, 2), rand(2, 3)
    assert torch.allclose(fast_causal_conv(x, k, fft=False), hand_conv(x, k), atol=1e-12) and not called
    monkeypatch.setattr(long_mod, "LONG_CONV_DIRECT", "matmul")
    with pytest.raises(ValueError, match="LONG_CONV_DIRECT"):
        fast_causal_conv(x, k, fft=False)


def test_long_short_conv_takes_the_toeplitz_form_when_switched_on(monkeypatch):
    """causal_conv1d with W > 8 (H3's shift SSM) under LONG_CONV_DIRECT = "toeplitz": outputs, the final state
    and the gradients equal the F.conv1d path, with a bias and an initial state."""
    import attnzoo.ops.conv.long as long_mod

    x, w, b, s = rand(2, 13, 3, seed=1), rand(3, 12, seed=2), rand(3, seed=3), rand(2, 11, 3, seed=4)
    calls, toeplitz = [], long_mod._toeplitz_conv
    monkeypatch.setattr(long_mod, "_toeplitz_conv", lambda *a: calls.append(1) or toeplitz(*a))
    outs = []
    for path in ("conv1d", "toeplitz"):
        monkeypatch.setattr(long_mod, "LONG_CONV_DIRECT", path)
        leaves = [t.clone().requires_grad_() for t in (x, w, b, s)]
        y, S = causal_conv1d(*leaves[:3], initial_state=leaves[3], output_final_state=True, impl="torch")
        outs.append([y, S, *torch.autograd.grad((y * y).sum(), leaves)])
    assert calls == [1]  # the toeplitz pass took the matmul, the conv1d pass did not
    for a, c in zip(*outs):
        assert torch.allclose(a, c, atol=1e-11)
