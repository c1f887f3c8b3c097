"""Each read-out head example runs at its --small size and prints its result."""

import pytest


@pytest.mark.parametrize("name", ["label_attention_icd", "xpool_retrieval", "attention_pool_mil", "hierarchical_smith",
                                  "sepsis_irregular", "swapmix_vqa", "pointer_routing", "melm_mechanics"])
def test_example_runs_small(name, capsys, load_example):
    result = load_example(name).main(["--small"])
    out = capsys.readouterr().out
    assert result is not None and out.strip(), f"{name} printed nothing"
