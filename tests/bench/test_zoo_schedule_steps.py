"""--schedule-steps: a zoo preset whose cosine spans more steps than a run may take (Zoology's schedule
under a session's compute cap), checked, recorded and stated in the leaderboard."""

from __future__ import annotations

import pytest

from attnzoo.bench.zoo.presets import get_preset
from attnzoo.bench.zoo.report import budget_sentence
from attnzoo.cli import build_parser


def test_preset_takes_a_schedule_at_least_as_long_as_its_steps():
    p = get_preset("paper", steps=1500, schedule_steps=12_500)
    assert (p.steps, p.schedule_steps) == (1500, 12_500)
    assert get_preset("paper").schedule_steps is None
    with pytest.raises(ValueError, match="schedule_steps"):
        get_preset("paper", steps=1500, schedule_steps=1000)
    with pytest.raises(ValueError, match="schedule_steps"):
        get_preset("paper", schedule_steps=2.5)


def test_cli_passes_it_and_the_leaderboard_states_it():
    args = build_parser().parse_args(["zoo", "--preset", "paper", "--steps", "1500", "--schedule-steps", "12500"])
    assert args.schedule_steps == 12500
    rows = [{"max_steps": 1500, "target_accuracy": 0.99, "schedule_steps": 12_500}]
    text = " ".join(budget_sentence(rows))
    assert "up to 1500 steps" in text and "spans 12500 steps instead" in text and "lower bound" in text
    assert "instead" not in " ".join(budget_sentence([{"max_steps": 1500, "target_accuracy": 0.99}]))
