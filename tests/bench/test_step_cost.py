"""attnzoo bench step-cost (folded from benchmarks/zoo_step_cost.py): one zoo model's training-step
time, evaluation time, size and state bytes, and the CLI wiring."""

import pytest

from attnzoo.bench import step_cost as sc
from attnzoo.bench.zoo import build_model
from attnzoo.bench.zoo.presets import get_preset
from attnzoo.cli import build_parser


def test_one_mixer_row_matches_the_zoo_model(monkeypatch):
    timed = []
    real = sc.call_times
    monkeypatch.setattr(sc, "call_times", lambda fn, **kw: timed.append(kw) or real(fn, **kw))
    lines = []
    rows = sc.run_step_cost(mixers=["softmax"], batch_size=2, steps=2, echo=lines.append)
    (r,) = rows
    preset = get_preset("quick")
    T = preset.grid[0][0]
    lm = build_model({"mixer": "softmax", "d_model": preset.d_models[0], "vocab_size": preset.vocab_size,
                      "seq_len": T}, preset)
    assert r["mixer"] == "softmax" and r["ms_per_step"] > 0 and r["eval_ms"] > 0
    assert r["params"] == sum(p.numel() for p in lm.parameters()) and r["state_bytes"] == lm.state_bytes(T)
    assert timed == [{"repeats": 2, "warmup": 0}]  # the two warm-up steps run before the timed ones
    assert lines[0].startswith("softmax") and lines[-1].startswith("sum over 1 mixers")


def test_bad_kwargs_choice_raises():
    with pytest.raises(ValueError, match="kwargs must be"):
        sc.run_step_cost(mixers=["softmax"], kwargs="cards", steps=1)


def test_cli_wires_the_subcommand():
    args = build_parser().parse_args(["bench", "step-cost", "--mixers", "softmax,gla", "--steps", "3"])
    assert args.func.__name__ == "cmd_bench_step_cost" and args.steps == 3 and args.threads == 1
