"""Smoke tests: each vision / structured-encoder example runs at a reduced size and prints its result."""

from __future__ import annotations

import pytest


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
def test_example_runs_small(name, key, capsys, load_example):
    result = load_example(name).main(["--small"])
    out = capsys.readouterr().out
    assert f"{name}:" in out and "learned=" in out
    assert key in result and result[key] == result[key]  # present and not NaN
