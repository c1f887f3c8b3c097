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


def test_switched_sets_module_switches_and_restores_them_also_on_error():
    import types

    import pytest

    from attnzoo.bench.timing import switched

    mod = types.ModuleType("m")
    mod.FLAG, mod.MODE = False, "a"
    with switched(mod, FLAG=True, MODE="b"):
        assert mod.FLAG is True and mod.MODE == "b"
    assert mod.FLAG is False and mod.MODE == "a"
    with pytest.raises(RuntimeError), switched(mod, FLAG=True):
        raise RuntimeError
    assert mod.FLAG is False
    with pytest.raises(AttributeError, match="NOPE"), switched(mod, NOPE=1):
        pass
