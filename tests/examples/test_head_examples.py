"""Each read-out head example runs at its --small size and prints its result."""

import importlib.util
import pathlib

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", ["label_attention_icd", "xpool_retrieval", "attention_pool_mil", "hierarchical_smith", "sepsis_irregular", "swapmix_vqa", "pointer_routing", "melm_mechanics"])
def test_example_runs_small(name, capsys):
    result = load(name).main(["--small"])
    out = capsys.readouterr().out
    assert result is not None and out.strip(), f"{name} printed nothing"
