import pytest

import attnzoo
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
    assert card.state_bytes(64, 4, 100) == 2 * 64 * 100 * 4  # K and V, fp32, every token
    assert attnzoo.build("sliding_window", d_model=64, window=16).state_bytes(1000) == 2 * 64 * 16 * 4
