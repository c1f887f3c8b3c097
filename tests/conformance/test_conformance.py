"""The mixer contract, checked on every registered mixer (no per-mixer code needed).

Functional comparisons run in float64 so that they test the algebra, not rounding. A mixer that
declares on its card that it lacks a property (card.limits, or causal/decode/padding False) is
checked for the declaration instead: the property must really fail, or the input be refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import attnzoo
from attnzoo.mixers.base import MixerState

D = 32
T = 21
MIXERS = attnzoo.list_mixers()


def make(name, dtype=torch.float64, seed=0, train=False):
    card = attnzoo.get_card(name)
    torch.manual_seed(seed)
    m = attnzoo.build(name, d_model=D, **card.example_kwargs).to(dtype)
    return m.train(train)


def inputs(B=2, t=T, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, t, D, generator=g, dtype=torch.float64).to(dtype)


def close(a, b, tol=1e-8):
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1.0)
    return err <= tol * scale, err


def run(m, x, **kw):
    with torch.no_grad():
        return m(x, **kw)


def continue_equal(m, s1, s2, B, seed=7):
    """Two states are equivalent if the same next tokens give the same outputs from both."""
    nxt = inputs(B, 5, seed=seed)
    ok, err = close(run(m, nxt, state=s1), run(m, nxt, state=s2))
    return ok, err


def declared(card, prop: str) -> bool:
    return prop in card.limits


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MIXERS)
def test_card_is_consistent(name):
    card = attnzoo.get_card(name)
    m = make(name)
    assert m.causal == card.causal, "card.causal must describe the default-built mixer"
    assert card.decode <= card.causal, "only a causal mixer can decode with a state"
    for t in (1, 64, 4096):
        assert card.state_bytes(512, 8, t) >= 0
        assert m.state_bytes(t) >= 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", MIXERS)
def test_shape_dtype_finite(name, dtype):
    m = make(name, dtype)
    x = inputs(dtype=dtype)
    y = run(m, x)
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name", MIXERS)
def test_every_parameter_gets_a_gradient(name):
    m = make(name, torch.float32, train=True)
    x = inputs(dtype=torch.float32).requires_grad_(True)
    y = m(x)
    loss = (y * torch.randn_like(y)).sum()
    if m.aux_loss is not None:
        loss = loss + m.aux_loss
    loss.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, p in m.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


@pytest.mark.parametrize("name", MIXERS)
def test_causality(name):
    card = attnzoo.get_card(name)
    m = make(name)
    x = inputs()
    changed_anywhere = False
    for t in (0, T // 2, T - 2):
        x2 = x.clone()
        x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :]) * 3
        y, y2 = run(m, x), run(m, x2)
        same = torch.equal(y[:, : t + 1], y2[:, : t + 1])
        changed_anywhere |= not same
        if card.causal:
            assert same, f"output at positions <= {t} changed when only later inputs changed"
    if not card.causal:
        assert changed_anywhere, "card says non-causal, but no output ever depended on a later input"


@pytest.mark.parametrize("name", MIXERS)
def test_state_continuation(name):
    card = attnzoo.get_card(name)
    m = make(name)
    x = inputs()
    if not card.decode:
        with pytest.raises(ValueError):
            run(m, x, return_state=True)
        return
    full = run(m, x)
    for split in (1, 7, T - 1):
        y1, s = run(m, x[:, :split], return_state=True)
        y2, s2 = run(m, x[:, split:], state=s, return_state=True)
        ok, err = close(torch.cat([y1, y2], 1), full)
        assert ok, f"prefix/rest split at {split} differs from the whole sequence by {err:.3g}"
    # one token at a time, all the way
    ys, s = [], None
    for t in range(T):
        y, s = run(m, x[:, t : t + 1], state=s, return_state=True)
        ys.append(y)
    ok, err = close(torch.cat(ys, 1), full)
    assert ok, f"token-by-token decoding differs from the whole sequence by {err:.3g}"
    # the final state after the whole sequence equals the one built step by step
    _, s_full = run(m, x, return_state=True)
    ok, err = continue_equal(m, s_full, s, 2)
    assert ok, f"state after the whole sequence and after T single steps disagree by {err:.3g}"


def _padded(x, left: int, right: int, seed=3):
    g = torch.Generator().manual_seed(seed)
    B = x.shape[0]
    junk_l = torch.randn(B, left, D, generator=g, dtype=torch.float64).to(x.dtype) * 5
    junk_r = torch.randn(B, right, D, generator=g, dtype=torch.float64).to(x.dtype) * 5
    xp = torch.cat([junk_l, x, junk_r], 1)
    mask = torch.zeros(B, xp.shape[1], dtype=torch.bool)
    mask[:, left : left + x.shape[1]] = True
    return xp, mask


@pytest.mark.parametrize("side", ["left", "right", "both"])
@pytest.mark.parametrize("name", MIXERS)
def test_padding_invariance(name, side):
    card = attnzoo.get_card(name)
    m = make(name)
    x = inputs()
    left, right = {"left": (5, 0), "right": (0, 6), "both": (3, 4)}[side]
    xp, mask = _padded(x, left, right)
    if not card.padding:
        with pytest.raises(ValueError):
            run(m, xp, mask=mask)
        return
    if card.decode:
        y, s = run(m, x, return_state=True)
        yp, sp = run(m, xp, mask=mask, return_state=True)
        ok, err = continue_equal(m, s, sp, x.shape[0])
        assert ok, f"{side} padding changed the state (continuations differ by {err:.3g})"
    else:
        y, yp = run(m, x), run(m, xp, mask=mask)
    ok, err = close(yp[:, left : left + T], y)
    assert ok, f"{side} padding changed outputs at real positions by {err:.3g}"


@pytest.mark.parametrize("name", MIXERS)
def test_padding_per_row(name):
    """Rows of one batch padded differently (a ragged batch) each match their unpadded run."""
    card = attnzoo.get_card(name)
    m = make(name)
    x = inputs(B=2)
    xp = torch.cat([inputs(B=2, t=4, seed=9) * 4, x], 1)
    mask = torch.ones(2, T + 4, dtype=torch.bool)
    mask[0, :4] = False  # row 0 left-padded by 4 ...
    xp[1] = torch.cat([x[1], inputs(B=1, t=4, seed=11)[0] * 4], 0)
    mask[1, T:] = False  # ... row 1 right-padded by 4
    if not card.padding:
        with pytest.raises(ValueError):
            run(m, xp, mask=mask)
        return
    yp = run(m, xp, mask=mask)
    y = run(m, x)
    ok0, e0 = close(yp[0, 4:], y[0])
    ok1, e1 = close(yp[1, :T], y[1])
    assert ok0 and ok1, f"ragged batch: errors {e0:.3g} (left-padded row), {e1:.3g} (right-padded row)"


@pytest.mark.parametrize("name", MIXERS)
def test_batch_independence(name):
    card = attnzoo.get_card(name)
    m = make(name)
    x = inputs(B=3)
    ok, err = close(run(m, x)[:1], run(m, x[:1]))
    if declared(card, "batch_independence"):
        assert not ok, "card declares batch dependence, but rows were independent"
    else:
        assert ok, f"row 0's output depends on the other rows ({err:.3g})"


@pytest.mark.parametrize("name", MIXERS)
def test_float32_agrees_with_float64(name):
    card = attnzoo.get_card(name)
    m64 = make(name, torch.float64)
    m32 = make(name, torch.float32)
    x = inputs()
    y64 = run(m64, x)
    y32 = run(m32, x.float()).double()
    rel = ((y32 - y64).norm() / y64.norm().clamp_min(1e-12)).item()
    if declared(card, "float64"):
        assert rel > 1e-3, "card declares float32/float64 disagreement, but they agree"
    else:
        assert rel < 1e-4, f"float32 and float64 disagree: relative error {rel:.3g}"


# ---------------------------------------------------------------------------------------------
@dataclass
class ForeignState(MixerState):
    S: torch.Tensor


@pytest.mark.parametrize("name", MIXERS)
def test_bad_input_raises_value_error(name):
    card = attnzoo.get_card(name)
    m = make(name)
    x = inputs()
    cases = {
        "rank 2": (x[0], {}),
        "wrong last dim": (x[..., :-1], {}),
        "integer dtype": (x.long(), {}),
        "mask wrong shape": (x, {"mask": torch.ones(2, T + 1, dtype=torch.bool)}),
        "mask wrong dtype": (x, {"mask": torch.ones(2, T)}),
        "state from another mixer": (x, {"state": ForeignState(torch.zeros(2, 1))}),
    }
    for what, (xi, kw) in cases.items():
        with pytest.raises(ValueError) as info:
            run(m, xi, **kw)
        assert str(info.value), f"{what}: the error must say what was expected"
    msg = str(pytest.raises(ValueError, run, m, x[..., :-1]).value)
    assert str(D) in msg, f"the error for a wrong last dimension must name d_model={D}: {msg!r}"
    if card.decode:
        _, s = run(m, x, return_state=True)
        with pytest.raises(ValueError, match="batch"):
            run(m, x[:1], state=s)
    else:
        with pytest.raises(ValueError):
            run(m, x, state=ForeignState(torch.zeros(2, 1)))
