"""Scheduling of a zoo sweep: equal steps per run, longest runs first, time caps that share what is left.

Budget rule (what the leaderboard states): every run trains up to `preset.steps` steps (the
cosine schedule spans them), stops early once held-out accuracy reaches the target, and is cut
by a wall-clock cap only as a safety net on a machine too slow for the sweep's budget. So a slow
mixer gets as many steps as a fast one and does not look worse for being slow, unless the preset
sets time_cap_ratio (quick: 0.5): then a run dearer than that many times the median run trains the
steps that time buys (capped_steps), and the leaderboard says so.

- probe_step_seconds(spec, preset, device): seconds of one training step of that run's model
  (one warm-up step, then the median of three timed ones; on a CPU the fastest, since other jobs
  on the machine only ever add time; the sweep probes a CPU run twice), to order the runs and size
  the steps;
- longest_first(specs, costs): the runs in decreasing expected time (cost x steps), so the
  slowest mixers start at once and the last runs to finish are short (LPT scheduling: with W
  workers the sweep ends at most one short run after the busiest worker);
- SweepBudget.order(...): the runs longest first, and the number of steps every run gets:
  preset.steps, or fewer when the probed step times say that preset.steps would not fit in
  the sweep's wall budget (the same number for all runs, so the cosine schedule still ends),
  but never fewer than preset.min_steps: on a slow or busy machine the sweep then takes longer
  than total_seconds rather than train too little to rank anything;
- capped_steps(...): with preset.time_cap_ratio set (the quick preset), a run whose steps would
  take more than that many times the median run's time gets the steps that time buys instead
  (its cosine schedule spanning them; the leaderboard marks it). The cap is relative to the
  other runs' probes, so the steps planned do not depend on how loaded the machine is;
- run_cap(...): the cap of a run being started = what is left of the sweep's wall budget, times
  the workers, shared among the work not done yet (itself, the runs queued, what the running
  ones have left) in proportion to expected time. A run that stops early (target reached)
  leaves its unused time to the later ones.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


def probe_step_seconds(spec: dict, preset, device: str = "cpu", threads: int | None = None) -> float:
    """Wall seconds of one training step (forward, loss, backward, AdamW) of `spec`'s model, under
    the trainer's autocast (bf16 on CUDA). The first step (Triton JIT, warm-up) is not timed: the
    median of the three steps after it is returned; on a CPU, the fastest of the three (a CPU
    shared with other jobs only ever adds time to a step, and the time cap's plan rests on the
    ratios of these probes: measured on the shared 2-core CPU, one-head softmax over the median
    probe was 0.41 at the fastest of three passes of `attnzoo bench step-cost`, 0.72 in one sweep's
    medians of three).

    Returns inf when the model cannot be built or stepped: the run itself then records why."""
    from attnzoo.bench.zoo import models
    from attnzoo.tasks import token_task
    from attnzoo.train.optim import build_optimizer
    from attnzoo.train.trainer import _autocast

    if threads:
        torch.set_num_threads(threads)
    try:
        data = token_task(spec["task"], seq_len=spec["seq_len"], num_train=preset.batch_for(spec["seq_len"]),
                          num_test=1, seed=preset.seed, num_pairs=max(1, spec["num_pairs"]),
                          vocab_size=spec["vocab_size"], random_non_queries=preset.random_non_queries)
        x, y = (t.to(device) for t in data.train)
        lm = models.build_model(spec, preset).to(device)
        opt = build_optimizer(lm, name="adamw", lr=1e-4, weight_decay=0.0)
        times = []
        on_cpu = torch.device(device).type == "cpu"
        for i in range(4):
            if device != "cpu" and torch.cuda.is_available():
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with _autocast(torch.device(device), None):
                logits = lm(x)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device != "cpu" and torch.cuda.is_available():
                torch.cuda.synchronize()
            if i:
                times.append(time.perf_counter() - t0)
        return min(times) if on_cpu else sorted(times)[1]
    except Exception:  # noqa: BLE001 -- a broken mixer is reported by its run, not by the probe
        return float("inf")


def longest_first(specs: list[dict], costs: list[float]) -> list[dict]:
    """Specs sorted by decreasing cost (stable: equal costs keep their planned order); a failed
    probe (inf) goes last, since its run ends at once with an error."""
    if len(specs) != len(costs):
        raise ValueError(f"need one cost per run, got {len(costs)} costs for {len(specs)} runs")
    order = sorted(range(len(specs)), key=lambda i: (costs[i] == float("inf"), -costs[i], i))
    return [specs[i] for i in order]


def budget_costs(costs: list[float]) -> list[float]:
    """Costs for sharing the budget: a failed probe (inf) counts as the dearest finite one (1.0 if none)."""
    finite = [c for c in costs if c != float("inf")]
    worst = max(finite) if finite else 1.0
    return [worst if c == float("inf") else c for c in costs]


def run_cap(*, total_seconds: float | None, run_seconds: float | None, elapsed: float, workers: int,
            cost: float, queued_cost: float, running_left: float = 0.0, initial_cost: float,
            floor_fraction: float = 0.25) -> float | None:
    """Wall-clock cap (seconds) of a run started `elapsed` seconds into the sweep.

    Costs are expected seconds of whole runs (probe x steps). The run gets the share of the time
    left, times the workers, in proportion to its cost among the work not done: itself, the runs
    queued (queued_cost) and what the running ones are expected to have left (running_left):

        cap = (total_seconds - elapsed) * workers * cost / (cost + queued_cost + running_left),

    never below floor_fraction of its share at the start (total_seconds * workers * cost /
    initial_cost) and never above run_seconds. On a machine fast enough for the budget the cap
    exceeds the run's expected time and never binds; on a slow one every run is cut at about the
    same fraction of its steps. None: no cap (neither budget set)."""
    if workers < 1 or cost < 0 or initial_cost <= 0:
        raise ValueError(f"need workers >= 1, cost >= 0 and initial_cost > 0, got {workers}, {cost}, {initial_cost}")
    if total_seconds is None:
        return run_seconds
    work = max(cost + queued_cost + running_left, 1e-12)
    share = max((total_seconds - elapsed) * workers * cost / work,
                floor_fraction * total_seconds * workers * cost / initial_cost)
    return share if run_seconds is None else min(run_seconds, share)


# A zoo step costs more than its probe: an evaluation every eval_every steps (~3% in the quick
# preset), the allocator's growth over a long run (some chunked ops reach GBs of RSS at B=64, T=64)
# and other jobs on the machine. Measured on the shared 2-core CPU, probes taken two at a time as
# the runs are: in-run ms/step over probe ms from 0.75 to 1.76, mean ~1.05 in one sweep, ~1.4 in
# another under heavier load.
CONTENTION = 1.25
# On one GPU shared by several runs at once the gap is larger and not a plain factor: on the H200
# with 8 runs at once (standard preset, 176 runs, benchmarks/results/zoo_standard) in-run seconds per
# step were about max(2.5 x probe, 37 ms): the tiny models' steps hit a floor set by the processes
# taking turns on the GPU (7 ms probes ran at 33-39 ms), larger ones scale with their probe. (A
# plain factor of 2.6 cut 52 of those runs, nearly all of the cheapest mixers.) The floor is taken
# as proportional to the runs sharing the GPU, measured at 8 only.
CUDA_SHARED_SLOPE = 2.5
CUDA_SHARED_FLOOR_PER_RUN = 0.0046


# When the steps asked for (min_steps) need more than the sweep's budget, the budget is stretched to
# this many times what they are expected to need: the runs' wall caps are a safety net there, not the
# budget (on the shared CPU in-run steps ran up to ~1.8x their probes as other jobs came and went).
STRETCH_MARGIN = 1.5


@dataclass(frozen=True)
class StepModel:
    """In-run seconds per step from a probe's: max(probe x factor, floor_s)."""

    factor: float
    floor_s: float = 0.0

    def __call__(self, probe_s: float) -> float:
        return max(probe_s * self.factor, self.floor_s)


def contention_for(device: str, workers: int) -> StepModel:
    """The model from probed to in-run seconds per step for runs on `device`, `workers` at once."""
    if str(device).startswith("cuda") and workers > 1:
        return StepModel(CUDA_SHARED_SLOPE, CUDA_SHARED_FLOOR_PER_RUN * workers)
    return StepModel(CONTENTION)


def _lower_median(xs: list[float]) -> float:
    return sorted(xs)[(len(xs) - 1) // 2]


def capped_steps(per_step: list[float], steps: int, ratio: float | None) -> list[int]:
    """Steps of each run: `steps`, or for a run whose `steps` would take more than `ratio` times the
    median run's time (per_step: its expected seconds per step), floor(ratio * median * steps / per_step)
    (at least 1). ratio None: `steps` for every run."""
    if ratio is not None and not ratio > 0:
        raise ValueError(f"the time cap ratio must be > 0 (or None), got {ratio!r}")
    if ratio is None or not per_step:
        return [steps] * len(per_step)
    level = ratio * _lower_median(per_step) * steps      # seconds
    return [steps if p * steps <= level else max(1, math.floor(level / p)) for p in per_step]


class SweepBudget:
    """The sweep's runs in schedule order, the steps they all get, and each run's time cap."""

    def __init__(self, preset, workers: int, t_start: float, contention: float | StepModel = CONTENTION):
        self.preset, self.workers, self.t_start = preset, workers, t_start
        self.asked_steps, self.fit_steps, self.planned_seconds = preset.steps, None, None
        self.contention = contention if isinstance(contention, StepModel) else StepModel(float(contention))
        self.total_seconds = preset.total_seconds
        self.expected: list[float] = []
        self.run_steps: list[int] = []
        self.probes: list[float] = []
        self.started: dict[int, float] = {}

    def order(self, specs: list[dict], probe_seconds: list[float], max_runs: int | None) -> list[dict]:
        """The runs longest first (at most max_runs); sets self.preset.steps to what fits, but no
        fewer than preset.min_steps: then the wall budget grows to what those steps need. With
        preset.time_cap_ratio, the runs above the cap get fewer steps (capped_steps, self.run_steps)
        and the fit counts them at the cap."""
        cost = dict(zip(map(id, specs), budget_costs(probe_seconds)))
        probe = dict(zip(map(id, specs), probe_seconds))
        specs = longest_first(specs, probe_seconds)[:max_runs]
        per_step = [self.contention(cost[id(s)]) for s in specs]
        self.probes = [probe[id(s)] for s in specs]
        total, ratio = self.preset.total_seconds, self.preset.time_cap_ratio
        # seconds per step of the whole sweep: a capped run costs the cap (ratio x the median run), not its own
        capped = per_step if ratio is None or not specs else [min(c, ratio * _lower_median(per_step)) for c in per_step]
        if total is not None and specs:
            left = total - (time.perf_counter() - self.t_start)
            fit = math.floor(max(0.0, left) * self.workers / max(sum(capped), 1e-12))
            self.fit_steps = fit
            steps = max(1, self.preset.min_steps, min(self.preset.steps, fit))
            self.preset = replace(self.preset, steps=steps)
        self.run_steps = capped_steps(per_step, self.preset.steps, ratio)
        self.expected = [c * n for c, n in zip(per_step, self.run_steps)]
        if total is not None and specs and self.preset.steps > self.fit_steps:
            self.planned_seconds = total - left + sum(self.expected) / self.workers
            # the wall caps (start) then share a budget STRETCH_MARGIN x what the plan needs: the steps
            # are fixed by the floor, so a cap only cuts a run on a machine much slower than probed
            self.total_seconds = total - left + STRETCH_MARGIN * sum(self.expected) / self.workers
        return specs

    def preset_for(self, key: int):
        """The preset run `key` trains with: its own steps (fewer than the sweep's when capped)."""
        n = self.run_steps[key] if key < len(self.run_steps) else self.preset.steps
        return self.preset if n == self.preset.steps else replace(self.preset, steps=n,
                                                                   min_steps=min(n, self.preset.min_steps))

    def record_fields(self, key: int) -> dict:
        """What a run's record says of the budget: its probe, the sweep's steps, the cap ratio if any."""
        out = {"probe_ms": self.probe_ms(key), "sweep_steps": self.preset.steps}
        if self.preset.time_cap_ratio is not None:
            out["time_cap_ratio"] = self.preset.time_cap_ratio
        return out

    def steps_note(self) -> str | None:
        """What order() did to the steps asked for, in a line for the user (None: every run gets them)."""
        steps, total = self.preset.steps, self.preset.total_seconds
        n_capped = sum(n < steps for n in self.run_steps)
        capped = (f"; {n_capped} run(s) above {self.preset.time_cap_ratio:g}x the median run's time get the steps "
                  "that time buys") if n_capped else ""
        if steps < self.asked_steps:
            return (f"steps: {steps} per run, not {self.asked_steps}: that is what the probed step times fit "
                    f"in the {total:g} s budget (a larger --total-seconds gives more){capped}")
        if self.fit_steps is not None and steps > self.fit_steps:     # steps == min_steps, the floor
            return (f"steps: {steps} per run (min_steps) need about {self.planned_seconds:.0f} s, more than the "
                    f"{total:g} s budget, which is stretched to them{capped}")
        return f"steps: {steps} per run{capped}" if capped else None

    def probe_ms(self, key: int) -> float | None:
        t = self.probes[key]
        return None if t == float("inf") else round(1e3 * t, 2)

    def start(self, key: int) -> float | None:
        now = time.perf_counter()
        left = sum(max(0.0, self.expected[k] - (now - t)) for k, t in self.started.items())
        self.started[key] = now
        return run_cap(total_seconds=self.total_seconds, run_seconds=self.preset.run_seconds,
                       elapsed=now - self.t_start, workers=self.workers, cost=self.expected[key],
                       queued_cost=sum(self.expected[key + 1:]), running_left=left,
                       initial_cost=max(sum(self.expected), 1e-12))

    def finish(self, key: int):
        self.started.pop(key, None)

    def add_warmup(self, warmup_s: float | None):
        """A finished run's warm-up (its first step: Triton JIT, allocator warm-up), which its cap did
        not count (TrainConfig.max_seconds), is not charged to the sweep either: the wall budget
        grows by it, divided among the workers that run side by side."""
        if self.total_seconds is not None and warmup_s:
            self.total_seconds += warmup_s / self.workers
