"""log_linear_mamba2 and log_linear_gdn (arXiv:2506.04761): the mixers' chunked path against the token
loop (forward, state, every gradient), decoding token by token with a capped level count and padding
holes, the state's log2 growth, and equal level weights giving back Mamba-2 / Gated DeltaNet (the
contract itself is in tests/conformance)."""

import pytest
import torch

import attnzoo

F64 = torch.float64
NAMES = ["log_linear_mamba2", "log_linear_gdn"]
BASE = {"log_linear_mamba2": "mamba2", "log_linear_gdn": "gated_deltanet"}


def _mixer(name, seed=0, **kw):
    torch.manual_seed(seed)
    kwargs = dict(attnzoo.get_card(name).example_kwargs, **kw)
    return attnzoo.build(name, d_model=16, **kwargs).double()


def _x(B=2, T=37, seed=1):
    return torch.randn(B, T, 16, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("name", NAMES)
def test_chunked_path_matches_the_token_loop_forward_state_and_gradients(name):
    x, w = _x(B=1), _x(B=1, seed=2)      # 37 tokens: two of the mixers' chunks of 32
    outs = []
    for impl in ("torch", "reference"):
        m = _mixer(name, impl=impl).train()
        y, s = m(x, return_state=True)
        outs.append((y, s.S, *torch.autograd.grad((y * w).sum() + s.S.sum(), list(m.parameters()))))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_decoding_with_capped_levels_and_padding_holes(name):
    m = _mixer(name, n_levels=3).eval()
    x = _x(T=19)
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[0, [2, 3, 9]] = False
    mask[1, [0, 15]] = False
    with torch.no_grad():
        y, s = m(x, mask=mask, return_state=True)
        ys, st = [], None
        for t in range(19):
            yt, st = m(x[:, t:t + 1], mask=mask[:, t:t + 1], state=st, return_state=True)
            ys.append(yt)
        torch.testing.assert_close(torch.cat(ys, 1)[mask], y[mask], rtol=1e-10, atol=1e-10)
        assert st.count.tolist() == [16, 17] and s.count.tolist() == [16, 17]
        nxt = _x(T=4, seed=3)
        torch.testing.assert_close(m(nxt, state=st), m(nxt, state=s), rtol=1e-10, atol=1e-10)
        # the holes are no-ops: row 0 equals its real tokens run alone
        torch.testing.assert_close(y[0][mask[0]], m(x[:1, mask[0]])[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_the_state_grows_with_log2_of_the_tokens_seen(name):
    m = _mixer(name).eval()
    with torch.no_grad():
        for T, levels in ((1, 1), (2, 2), (3, 2), (4, 3), (31, 5), (32, 6)):
            _, s = m(_x(T=T), return_state=True)
            assert s.S.shape[2] == levels, (T, s.S.shape)
    sizes = [m.state_bytes(2 ** j) for j in range(8)]
    assert sizes == sorted(set(sizes)) and m.state_bytes(5) == m.state_bytes(7)
    capped = _mixer(name, n_levels=4)
    assert capped.state_bytes(1000) == capped.state_bytes(10 ** 6)     # 3 levels at most


@pytest.mark.parametrize("name", NAMES)
def test_equal_level_weights_give_the_base_mixer(name):
    m = _mixer(name).eval()
    with torch.no_grad():
        m.levels.proj.weight.zero_()                  # softplus(b) = 1: every level weighs 1
    base = attnzoo.build(BASE[name], d_model=16, **attnzoo.get_card(name).example_kwargs).double().eval()
    missing = base.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("levels.")})
    assert not missing.missing_keys
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(m(x), base(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_bad_level_counts_and_states_are_refused(name):
    with pytest.raises(ValueError, match="n_levels"):
        _mixer(name, n_levels=1)
    m = _mixer(name)
    with torch.no_grad():
        _, s = m(_x(T=5), return_state=True)
        s.count = s.count.double()
        with pytest.raises(ValueError, match="count"):
            m(_x(T=2), state=s)
