"""Equal training for compared variants: evaluations at fixed step checkpoints, compared at a common step.

    every = checkpoint_every(steps)                        # TrainConfig(eval_every=every)
    step = common_step({"softmax": hist_a, "gated": hist_b})   # the largest step all evaluated at
    row_a = at_step(hist_a, step)

A run cut short by a wall-clock safety cap ends at fewer steps than the others; comparing final numbers
would favour the runs that trained longer. Each run's history (train_lm's `TrainResult.history`, or any
list of {"step": ..., ...}) holds its evaluations at multiples of `checkpoint_every`; the variants are
compared at the largest step every one of them reached, and a comparison is untestable when that step is
below `MIN_SHARE` of the plan (`untestable_reason`).
"""

from __future__ import annotations

MIN_SHARE = 0.5      # a comparison at fewer than half the planned steps is untestable
CHECKPOINTS = 10     # evaluations per run


def checkpoint_every(steps: int, checkpoints: int = CHECKPOINTS) -> int:
    """The evaluation interval giving `checkpoints` evaluations over `steps` (at least 1)."""
    if steps < 1 or checkpoints < 1:
        raise ValueError(f"steps and checkpoints must be >= 1, got {steps}, {checkpoints}")
    return max(1, steps // checkpoints)


def common_step(histories: dict) -> int | None:
    """The largest step at which every run in {name: [{"step": s, ...}, ...]} has an evaluation; None if none."""
    if not histories:
        raise ValueError("need at least one run's history")
    steps = [{int(h["step"]) for h in hist} for hist in histories.values()]
    shared = set.intersection(*steps)
    return max(shared) if shared else None


def at_step(history: list, step: int) -> dict:
    """The evaluation record of `history` at `step` (ValueError naming the steps there are)."""
    for h in history:
        if int(h["step"]) == step:
            return h
    raise ValueError(f"no evaluation at step {step}; evaluated at {[h['step'] for h in history]}")


def untestable_reason(step: int | None, planned: int, ends: dict, min_share: float = MIN_SHARE) -> str:
    """'' when the common step is at least min_share of the plan, else why the comparison is untestable."""
    cut = ", ".join(f"{k} at {v}" for k, v in ends.items() if v < planned)
    if step is None:
        return f"untestable: no step at which every variant was evaluated (stopped: {cut or 'none'})"
    if step < min_share * planned:
        return (f"untestable: the variants share only {step} of {planned} planned steps "
                f"(< {min_share:g} of the plan; stopped early: {cut})")
    return ""


def step_note(step: int, planned: int, ends: dict) -> str:
    """The conditions' words for a comparison at `step` (which runs the time cap stopped, and where)."""
    cut = [f"{k} stopped at {v}" for k, v in ends.items() if v < planned]
    if not cut:
        return f"compared at step {step} (all {planned} planned steps)"
    return (f"compared at step {step} of {planned} planned, the largest step every variant reached "
            f"({', '.join(cut)}: wall-clock safety cap)")
