"""Equal-steps comparison: variants stopped at different steps are compared at the step all reached."""

import pytest

from attnzoo.repro._steps import at_step, checkpoint_every, common_step, step_note, untestable_reason


def _hist(every, last, planned):
    steps = list(range(every, last + 1, every)) + ([last] if last % every else [])
    return [{"step": s, "loss": 3.0 - s / planned} for s in steps]


def test_common_step_is_the_largest_checkpoint_every_variant_reached():
    every = checkpoint_every(1500)
    assert every == 150
    hist = {"softmax": _hist(every, 799, 1500), "elementwise": _hist(every, 1008, 1500),
            "headwise": _hist(every, 1245, 1500)}
    step = common_step(hist)
    assert step == 750                                          # not 799 (only softmax evaluated there)
    assert [at_step(h, step)["loss"] for h in hist.values()] == [2.5] * 3
    ends = {k: h[-1]["step"] for k, h in hist.items()}
    assert untestable_reason(step, 1500, ends) == ""            # 750 >= half of 1500
    note = step_note(step, 1500, ends)
    assert "compared at step 750 of 1500" in note and "softmax stopped at 799" in note


def test_too_few_common_steps_is_untestable():
    hist = {"a": _hist(150, 1500, 1500), "b": _hist(150, 400, 1500)}
    step = common_step(hist)
    assert step == 300
    reason = untestable_reason(step, 1500, {"a": 1500, "b": 400})
    assert reason.startswith("untestable") and "b at 400" in reason
    assert "untestable" in untestable_reason(None, 10, {"a": 3})
    assert common_step({"a": [{"step": 5}], "b": [{"step": 6}]}) is None


def test_equal_runs_and_bad_input():
    assert step_note(100, 100, {"a": 100, "b": 100}) == "compared at step 100 (all 100 planned steps)"
    assert checkpoint_every(5) == 1
    with pytest.raises(ValueError, match="no evaluation at step 7"):
        at_step([{"step": 5}], 7)
    with pytest.raises(ValueError, match="at least one"):
        common_step({})
    with pytest.raises(ValueError, match=">= 1"):
        checkpoint_every(0)
