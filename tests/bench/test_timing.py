import pytest

from attnzoo.bench.timing import tuned


def test_tuned_changes_inside_and_restores_exactly_even_on_error():
    table = {"bv": 32, "num_warps": 4}
    with tuned(table, bv=8, extra=1) as t:
        assert t is table and table == {"bv": 8, "num_warps": 4, "extra": 1}
    assert table == {"bv": 32, "num_warps": 4}
    with pytest.raises(RuntimeError), tuned(table, num_warps=1):
        assert table["num_warps"] == 1
        raise RuntimeError("a config that does not compile")
    assert table == {"bv": 32, "num_warps": 4}
