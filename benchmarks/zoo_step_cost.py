"""Per-step cost of the zoo's models: what sizes the `quick` preset's budget (ms per training step).

    .venv/bin/python benchmarks/zoo_step_cost.py                        # all zoo mixers, quick preset
    .venv/bin/python benchmarks/zoo_step_cost.py --kwargs example       # the cards' example_kwargs only
    .venv/bin/python benchmarks/zoo_step_cost.py --mixers rwkv6 --profile   # where the time goes

One training step as the trainer takes it (forward, cross-entropy, backward, clipping, AdamW), at
the preset's T, d_model and batch size, single-threaded (as the CPU zoo runs), median of `--steps`
after two warm-up steps; plus one evaluation pass over num_test sequences.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from attnzoo.bench.zoo import build_model, default_mixers, mixer_kwargs
from attnzoo.bench.zoo.presets import get_preset
from attnzoo.train.optim import build_optimizer
from attnzoo.train.trainer import evaluate


def step_cost(mixer: str, preset, *, steps: int, batch_size: int, profile: bool = False) -> dict:
    from attnzoo.tasks.mqar import mqar_splits

    T, D = preset.grid[0]
    (x, y), test = mqar_splits(seq_len=T, num_pairs=D, vocab_size=preset.vocab_size, num_train=batch_size * 4,
                               num_test=preset.num_test, seed=0)
    spec = {"mixer": mixer, "d_model": preset.d_models[0], "vocab_size": preset.vocab_size, "seq_len": T}
    lm = build_model(spec, preset)
    opt = build_optimizer(lm, name="adamw", lr=1e-3, weight_decay=0.1)
    times = []

    def one(i):
        b = slice((i % 4) * batch_size, (i % 4 + 1) * batch_size)
        t0 = time.perf_counter()
        logits = lm(x[b])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[b].reshape(-1), ignore_index=-100)
        aux = lm.aux_loss() if hasattr(lm, "aux_loss") else None
        if aux is not None:
            loss = loss + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        return time.perf_counter() - t0

    for i in range(2):
        one(i)
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        with prof(activities=[ProfilerActivity.CPU]) as p:
            for i in range(steps):
                one(i)
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    for i in range(steps):
        times.append(one(i))
    t0 = time.perf_counter()
    evaluate(lm, *test)
    ev = time.perf_counter() - t0
    return {"mixer": mixer, "ms_per_step": 1e3 * statistics.median(times), "eval_ms": 1e3 * ev,
            "kwargs": mixer_kwargs(mixer, preset), "params": sum(p.numel() for p in lm.parameters()),
            "state_bytes": int(lm.state_bytes(T))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--kwargs", choices=("preset", "example"), default="preset",
                    help="the preset's mixer_kwargs overrides, or the cards' example_kwargs alone")
    ap.add_argument("--mixers", help="comma-separated (default: every zoo mixer)")
    ap.add_argument("--batch-size", type=int, help="default: the preset's")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    preset = get_preset(a.preset)
    if a.kwargs == "example":
        preset = replace(preset, mixer_kwargs=None)
    bs = a.batch_size or preset.batch_size
    mixers = a.mixers.split(",") if a.mixers else default_mixers()
    rows = []
    for m in mixers:
        r = step_cost(m, preset, steps=a.steps, batch_size=bs, profile=a.profile)
        rows.append(r)
        print(f"{m:16s} {r['ms_per_step']:7.1f} ms/step  eval {r['eval_ms']:6.0f} ms  params {r['params']:6d}  "
              f"state {r['state_bytes']:6d} B  {r['kwargs']}", flush=True)
    total = sum(r["ms_per_step"] for r in rows)
    print(f"sum over {len(rows)} mixers: {total:.0f} ms per step of each (batch {bs}, T={preset.grid[0][0]}, "
          f"d={preset.d_models[0]}, {a.threads} thread(s))")


if __name__ == "__main__":
    main()
