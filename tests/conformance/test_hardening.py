"""Registry-wide hardening of the mixer contract (issue #18): non-finite padding, states from other
mixers, empty batches, mismatched dtypes and the opt-in finite check, on every registered mixer."""

from __future__ import annotations

import itertools

import pytest
import torch

import attnzoo
from attnzoo.mixers.base import STATE_TAG, set_check_finite

D = 32
T = 12
MIXERS = attnzoo.list_mixers()
DECODERS = [n for n in MIXERS if attnzoo.get_card(n).decode]


def make(name, dtype=torch.float64, **over):
    torch.manual_seed(0)
    kwargs = dict(attnzoo.get_card(name).example_kwargs, **over)
    return attnzoo.build(name, d_model=D, **kwargs).to(dtype).eval()


def inputs(B=2, t=T, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, t, D, generator=g, dtype=torch.float64).to(dtype)


@pytest.mark.parametrize("junk", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("name", [n for n in MIXERS if attnzoo.get_card(n).padding])
def test_non_finite_padding_leaves_real_outputs_and_state_alone(name, junk):
    m = make(name)
    x = inputs()
    mask = torch.ones(2, T, dtype=torch.bool)
    mask[0, :3] = False
    mask[1, -4:] = False
    x_zero = torch.where(mask[..., None], x, torch.zeros(()).double())
    x_junk = torch.where(mask[..., None], x, torch.full((), junk).double())
    decode = attnzoo.get_card(name).decode
    with torch.no_grad():
        if decode:
            y0, s0 = m(x_zero, mask=mask, return_state=True)
            y1, s1 = m(x_junk, mask=mask, return_state=True)
        else:
            y0, y1 = m(x_zero, mask=mask), m(x_junk, mask=mask)
    assert torch.isfinite(y1[mask]).all(), f"{junk} in the padding made real outputs non-finite"
    torch.testing.assert_close(y1[mask], y0[mask], rtol=1e-10, atol=1e-10)
    if decode:
        nxt = inputs(2, 3, seed=5)
        with torch.no_grad():
            torch.testing.assert_close(m(nxt, state=s1), m(nxt, state=s0), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("maker,user", list(itertools.permutations(DECODERS, 2)))
def test_a_state_from_another_mixer_is_refused(maker, user):
    x = inputs()
    with torch.no_grad():
        _, s = make(maker)(x, return_state=True)
    with pytest.raises(ValueError, match="state"):
        with torch.no_grad():
            make(user)(x, state=s)


@pytest.mark.parametrize("name", DECODERS)
def test_a_state_from_the_same_class_with_another_configuration_is_refused(name):
    m = make(name)
    x = inputs()
    with torch.no_grad():
        _, s = m(x, return_state=True)
        assert getattr(s, STATE_TAG) == m.state_tag
        make(name)(x, state=s)                        # same class and config, other instance: accepted
        make(name, impl="torch")(x, state=s) if "impl" in m.config else None   # impl is not configuration
        assert getattr(s.detach(), STATE_TAG) == m.state_tag, "detach() must keep the tag"
    other = {k: v for k, v in m.config.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
             and k not in ("d_model",)}
    if not other:
        pytest.skip(f"{name} has no numeric constructor argument to vary")
    key = sorted(other)[0]
    try:
        changed = make(name, **{key: other[key] * 2})
    except ValueError:
        pytest.skip(f"{name}: {key}={other[key] * 2} is not a valid configuration")
    with pytest.raises(ValueError, match="another mixer"):
        with torch.no_grad():
            changed(x, state=s)


@pytest.mark.parametrize("name", MIXERS)
def test_an_empty_batch_is_refused_clearly(name):
    m = make(name)
    with pytest.raises(ValueError, match="B >= 1"):
        m(inputs(B=0))


@pytest.mark.parametrize("name", MIXERS)
def test_input_dtype_other_than_the_parameters_is_refused_outside_autocast(name):
    m = make(name, torch.float32)
    if not any(p.is_floating_point() for p in m.parameters()):
        pytest.skip(f"{name} has no parameters")
    for dt in (torch.bfloat16, torch.float16, torch.float64):
        with pytest.raises(ValueError, match="parameters are torch.float32"):
            m(inputs(dtype=dt))


@pytest.mark.parametrize("name", ["softmax", "gla", "rwkv6", "mamba"])
def test_under_autocast_a_low_precision_input_is_allowed(name):
    m = make(name, torch.float32)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(inputs(dtype=torch.bfloat16))
    assert torch.isfinite(y.float()).all()


@pytest.mark.parametrize("name", ["softmax", "gla", "deltanet", "mamba", "h3", "base_conv"])
def test_check_finite_rejects_nan_at_real_positions_only(name):
    m = make(name)
    x = inputs()
    x[0, 4] = float("nan")
    mask = torch.ones(2, T, dtype=torch.bool)
    with torch.no_grad():
        m(x)                                          # off by default: no check, no error
        m.check_finite = True
        with pytest.raises(ValueError, match="NaN or inf"):
            m(x)
        mask[0, 4] = False
        if attnzoo.get_card(name).padding:
            assert torch.isfinite(m(x, mask=mask)[mask]).all()   # a NaN in the padding is fine
        m.check_finite = None
        attnzoo.set_check_finite(True)                          # the public name
        try:
            with pytest.raises(ValueError, match="NaN or inf"):
                m(x)
        finally:
            set_check_finite(False)


def test_config_records_the_outermost_constructor_arguments():
    m = attnzoo.build("gla", d_model=D, n_heads=2, gate_rank=4)
    assert m.config["n_heads"] == 2 and m.config["gate_rank"] == 4 and m.config["d_model"] == D
    assert m.config["expand_k"] == 0.5                    # defaults filled in
    assert m.state_tag.startswith("gla(") and "impl" not in m.state_tag


@pytest.mark.parametrize("name", ["linear", "based"])
def test_normalized_linear_attention_in_float16_stays_finite_at_large_inputs(name):
    """normalize=True: numerator and normaliser are sums over the prefix; in float16 they overflowed
    (linear: NaN from t=337, based from t=48 at input scale 8) though their ratio is small."""
    m = make(name, torch.float16)
    x = (inputs(1, 512, dtype=torch.float32) * 8).half()
    with torch.no_grad():
        y = m(x)
        y32 = make(name, torch.float32)(x.float())
    assert torch.isfinite(y).all()
    rel = ((y.float() - y32).norm() / y32.norm()).item()
    assert rel < 2e-2, f"float16 differs from float32 by {rel:.3g}"
