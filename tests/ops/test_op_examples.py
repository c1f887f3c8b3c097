"""Every public op of ops/ (the names each family package exports) has a docstring that gives the
shapes (an Args and a Returns section) and an Example, and the example runs as written (doctest,
under a fixed seed): the examples compare paths and state continuations, so a wrong one fails."""

import doctest
import importlib

import pytest
import torch

FAMILIES = ("conv", "delta", "linear", "scan", "softmax")


def public_ops():
    ops = []
    for fam in FAMILIES:
        mod = importlib.import_module(f"attnzoo.ops.{fam}")
        for name in mod.__all__:
            fn = getattr(mod, name)
            if callable(fn) and not isinstance(fn, type):
                ops.append((f"{fam}.{name}", fn))
    return ops


OPS = public_ops()


def test_every_family_exports_its_ops():
    names = {n for n, _ in OPS}
    assert {"linear.gated_linear_attention", "delta.delta_rule", "scan.selective_scan", "conv.causal_conv1d",
            "conv.long_causal_conv", "softmax.softmax_attention", "softmax.subset_causal_attention"} <= names


@pytest.mark.parametrize("name", [n for n, _ in OPS])
def test_docstring_has_shapes_and_a_running_example(name):
    fn = dict(OPS)[name]
    doc = fn.__doc__ or ""
    if name != "softmax.attention_allowed":  # a mask helper: its example is its whole contract
        assert "Args:" in doc and "Returns:" in doc and "[B, " in doc, f"{name}: no Args/Returns with shapes"
    module = importlib.import_module(fn.__module__)
    tests = doctest.DocTestFinder(recurse=False).find(fn, name, globs={**vars(module), "torch": torch})
    assert tests and tests[0].examples, f"{name}: no example"
    torch.manual_seed(0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    for t in tests:
        runner.run(t)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted >= 1, f"{name}: {result}"
