"""Smoke tests: each vision / structured-encoder example runs at a reduced size and prints its result."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name,key", [
    ("halo_shift_copy", "mse"),
    ("maxvit_global_mean", "mse"),
    ("attention_unet_discs", "dice"),
    ("slot_attention_clusters", "chamfer"),
    ("partial_attention_reverse", "accuracy"),
    ("prompt_tuning_teacher", "relative_mse"),
    ("time_freq_denoise", "mse"),
    ("care_count_spots", "accuracy"),
])
def test_example_runs_small(name, key, capsys):
    result = load(name).main(["--small"])
    out = capsys.readouterr().out
    assert f"{name}:" in out and "learned=" in out
    assert key in result and result[key] == result[key]  # present and not NaN
