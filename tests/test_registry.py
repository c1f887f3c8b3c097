import dataclasses

import pytest
import torch

import attnzoo
import attnzoo.registry
from attnzoo.mixers.base import MixerState
from attnzoo.registry import Card, Paper, register

P = Paper("t", "a", 2020)


def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match="did you mean.*softmax"):
        attnzoo.build("sofmax", d_model=16)


def test_build_passes_kwargs_and_checks_them():
    m = attnzoo.build("softmax", d_model=32, n_heads=8)
    assert m.n_heads == 8 and m.head_dim == 4
    with pytest.raises(ValueError, match="divisible"):
        attnzoo.build("softmax", d_model=30, n_heads=4)
    with pytest.raises(ValueError, match="n_kv_heads"):
        attnzoo.build("softmax", d_model=32, n_heads=4, n_kv_heads=3)


def test_card_validation():
    with pytest.raises(ValueError, match="family"):
        Card("x", P, "nonsense", "O(1)", lambda d, h, t: 0)
    with pytest.raises(ValueError, match="limits"):
        Card("x", P, "linear", "O(1)", lambda d, h, t: 0, limits={"speed": "slow"})


def test_name_cannot_be_taken_twice():
    card = Card("x", P, "linear", "O(T)", lambda d, h, t: 0)
    with pytest.raises(ValueError, match="already registered"):
        register("softmax", card=card)(type("Other", (), {}))


def test_list_and_cards():
    names = attnzoo.list_mixers()
    assert {"softmax", "gated_softmax", "sliding_window"} <= set(names) and names == sorted(names)
    assert attnzoo.list_mixers(family="softmax")
    card = attnzoo.get_card("softmax")
    per_token = 2 * 64 * 4 + 1 + 8  # K and V fp32, valid (bool), kpos (int64)
    assert card.state_bytes(64, 4, 100) == 100 * per_token + 8  # every token, plus `seen`
    assert attnzoo.build("sliding_window", d_model=64, window=16).state_bytes(1000) == 16 * per_token + 8


# ---- the card is the one source of a mixer's state size ------------------------------------------
def _state_nbytes(s) -> int:
    """Bytes of every tensor a state holds (nested states included)."""
    if isinstance(s, torch.Tensor):
        return s.numel() * s.element_size()
    if isinstance(s, MixerState):
        return sum(_state_nbytes(getattr(s, f.name)) for f in dataclasses.fields(s))
    return 0


def _sizes(card):
    """Two sizes: the card's example at d_model 32, and d_model 64 with twice the heads."""
    small = dict(card.example_kwargs)
    large = {k: 2 * v if k in ("n_heads", "n_kv_heads") and v else v for k, v in small.items()}
    return ((32, small), (64, large))


DECODERS = [n for n in attnzoo.list_mixers() if attnzoo.get_card(n).decode]


@pytest.mark.parametrize("name", DECODERS)
def test_card_state_bytes_equal_the_returned_state(name):
    card = attnzoo.get_card(name)
    for d, kw in _sizes(card):
        torch.manual_seed(0)
        m = attnzoo.build(name, d_model=d, **kw)
        for T in (5, 40):  # shorter and longer than the example windows / blocks
            with torch.no_grad():
                _, s = m(torch.randn(2, T, d), return_state=True)
            real = _state_nbytes(s) // 2
            assert _state_nbytes(s) == 2 * real
            got = attnzoo.registry.state_bytes(name, T, d_model=d, **kw)
            assert got == real, f"card says {got} B for d_model={d}, {kw}, T={T}; the state holds {real} B"
            assert m.state_bytes(T) == real


def test_card_state_bytes_follow_non_default_kwargs():
    """A kwarg the formula names changes the answer (not only the defaults are known)."""
    sb = attnzoo.registry.state_bytes
    assert sb("softmax", 100, d_model=64, n_heads=4, n_kv_heads=1) < sb("softmax", 100, d_model=64, n_heads=4)
    assert sb("sliding_window", 1000, d_model=64, window=16) == sb("sliding_window", 16, d_model=64, window=16)
    assert sb("mamba", 1, d_model=64, d_state=32) > sb("mamba", 1, d_model=64)


def test_causal_lives_on_the_card():
    for name in attnzoo.list_mixers():
        assert attnzoo.get_class(name).causal == attnzoo.get_card(name).causal
