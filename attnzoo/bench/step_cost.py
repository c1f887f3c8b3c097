"""Per-step cost of the zoo's models: what sizes the `quick` preset's budget (ms per training step).

    attnzoo bench step-cost                               # all zoo mixers, quick preset
    attnzoo bench step-cost --kwargs example              # the cards' example_kwargs only
    attnzoo bench step-cost --mixers rwkv6 --profile      # where the time goes

One training step as the trainer takes it (forward, cross-entropy, backward, clipping, AdamW), at
the preset's T, d_model and batch size, single-threaded by default (as the CPU zoo runs), median
of `steps` after two warm-up steps (attnzoo.bench.timing); plus one evaluation pass over
num_test sequences.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from attnzoo.bench.timing import call_times, median
from attnzoo.bench.zoo import build_model, default_mixers, mixer_kwargs
from attnzoo.bench.zoo.presets import get_preset
from attnzoo.train.optim import build_optimizer
from attnzoo.train.trainer import evaluate


def step_cost(mixer: str, preset, *, steps: int, batch_size: int, profile: bool = False) -> dict:
    """{"mixer", "ms_per_step", "eval_ms", "kwargs", "params", "state_bytes"} of one mixer's zoo model."""
    from attnzoo.tasks.mqar import mqar_splits

    T, D = preset.grid[0]
    (x, y), test = mqar_splits(seq_len=T, num_pairs=D, vocab_size=preset.vocab_size, num_train=batch_size * 4,
                               num_test=preset.num_test, seed=0)
    spec = {"mixer": mixer, "d_model": preset.d_models[0], "vocab_size": preset.vocab_size, "seq_len": T}
    lm = build_model(spec, preset)
    opt = build_optimizer(lm, name="adamw", lr=1e-3, weight_decay=0.1)
    step_no = [0]

    def one():
        i = step_no[0]
        step_no[0] += 1
        b = slice((i % 4) * batch_size, (i % 4 + 1) * batch_size)
        logits = lm(x[b])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[b].reshape(-1), ignore_index=-100)
        aux = lm.aux_loss() if hasattr(lm, "aux_loss") else None
        if aux is not None:
            loss = loss + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()

    for _ in range(2):
        one()
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            for _ in range(steps):
                one()
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    times = call_times(one, repeats=steps, warmup=0)
    t0 = time.perf_counter()
    evaluate(lm, *test)
    ev = time.perf_counter() - t0
    return {"mixer": mixer, "ms_per_step": 1e3 * median(times), "eval_ms": 1e3 * ev,
            "kwargs": mixer_kwargs(mixer, preset), "params": sum(p.numel() for p in lm.parameters()),
            "state_bytes": int(lm.state_bytes(T))}


def run_step_cost(*, preset: str = "quick", kwargs: str = "preset", mixers=None, batch_size=None, steps: int = 8,
                  threads: int = 1, profile: bool = False, echo=print) -> list[dict]:
    """step_cost for each mixer (default: every zoo mixer), one line each and a total; returns the rows.

    kwargs: "preset" (the preset's mixer_kwargs overrides) or "example" (the cards' example_kwargs alone)."""
    if kwargs not in ("preset", "example"):
        raise ValueError(f"kwargs must be 'preset' or 'example', got {kwargs!r}")
    torch.set_num_threads(threads)
    p = get_preset(preset)
    if kwargs == "example":
        p = replace(p, mixer_kwargs=None)
    bs = batch_size or p.batch_size
    rows = []
    for m in mixers or default_mixers():
        r = step_cost(m, p, steps=steps, batch_size=bs, profile=profile)
        rows.append(r)
        echo(f"{m:16s} {r['ms_per_step']:7.1f} ms/step  eval {r['eval_ms']:6.0f} ms  params {r['params']:6d}  "
             f"state {r['state_bytes']:6d} B  {r['kwargs']}")
    total = sum(r["ms_per_step"] for r in rows)
    echo(f"sum over {len(rows)} mixers: {total:.0f} ms per step of each (batch {bs}, T={p.grid[0][0]}, "
         f"d={p.d_models[0]}, {threads} thread(s))")
    return rows
