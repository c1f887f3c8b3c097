"""Eager vs torch.compile training step time of the zoo's models (`attnzoo bench compile`).

One training step = forward of a Zoology-style LanguageModel (bench/zoo/models.build_model at the
preset's first (T, d_model) and its mixer sizes), cross-entropy on every position (plus a mixer's
aux loss), backward, AdamW step. Per mixer the same initial weights are stepped eagerly and through
`torch.compile(model, backend="inductor", dynamic=False)` (the optimizer step stays eager in both)
on the same random token batches; the compiled model's first step is timed apart (compile_s) and a
second untimed step takes any recompilation. Step times come from bench/timing.interleaved_times
(eager and compiled called in turn within each round, so a load change on a shared machine hits
both): the median over rounds of `steps` steps, wall clock and this process's CPU time (on a
shared CPU the CPU time moves less with other jobs' load). The first step's losses are compared
(relative difference recorded); a mixer that fails to compile is recorded with its error.

Writes <out>/compile_<device>.jsonl (a machine line, then one record per mixer, appended after each)
and <out>/compile_<device>.md (the table of this run).
"""

from __future__ import annotations

import copy
import json
import os
import time

import torch
import torch.nn.functional as F

from attnzoo.bench.ops_cpu import machine_line as cpu_machine_line
from attnzoo.bench.timing import interleaved_times, median, sync


def _step(model, opt, x, y):
    """One fwd + bwd + AdamW step; returns the loss (a tensor, not synchronised)."""
    logits = model(x)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
    aux = model.aux_loss() if hasattr(model, "aux_loss") else None
    if aux is not None:
        loss = loss + aux
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def machine(device: str) -> dict:
    """ops_cpu's machine line (CPU, cores, torch, threads, load, git) plus GPU, CUDA and Triton on CUDA."""
    m = cpu_machine_line(f"compile-{time.strftime('%Y%m%d-%H%M%S')}")
    if torch.device(device).type == "cuda":
        m.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    try:
        import triton

        m["triton"] = triton.__version__
    except ImportError:
        m["triton"] = None
    return m


def _preset(preset):
    from attnzoo.bench.zoo.presets import get_preset

    return get_preset(preset) if isinstance(preset, str) else preset


def bench_mixer(mixer: str, *, preset="quick", device: str = "cpu", steps: int = 5, rounds: int = 3,
                seed: int = 0, backend: str = "inductor") -> dict:
    """Eager and compiled step times (ms) of the preset's model for `mixer` at its first (T, d_model).
    preset: a name or a ZooPreset; backend: torch.compile's (inductor; aot_eager for smoke tests)."""
    from attnzoo.bench.zoo.models import build_model

    if steps < 1 or rounds < 1:
        raise ValueError(f"steps and rounds must be >= 1, got {steps}, {rounds}")
    p = _preset(preset)
    T, pairs = p.grid[0]
    spec = {"mixer": mixer, "task": "mqar", "seq_len": T, "num_pairs": pairs, "d_model": p.d_models[0],
            "vocab_size": p.vocab_size}
    B = p.batch_for(T)
    rec = {"kind": "compile_step", "mixer": mixer, "preset": p.name, "device": device, "seq_len": T,
           "d_model": spec["d_model"], "batch": B, "steps_per_round": steps, "rounds": rounds, "backend": backend}
    torch._dynamo.reset()
    eager = build_model(spec, p).to(device).train()
    compiled_model = copy.deepcopy(eager)
    opt_e = torch.optim.AdamW(eager.parameters(), lr=p.lrs[0], weight_decay=p.weight_decay)
    opt_c = torch.optim.AdamW(compiled_model.parameters(), lr=p.lrs[0], weight_decay=p.weight_decay)
    compiled = torch.compile(compiled_model, backend=backend, dynamic=False)
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randint(0, p.vocab_size, (B, T), generator=g).to(device),
                torch.randint(0, p.vocab_size, (B, T), generator=g).to(device)) for _ in range(steps)]
    try:
        loss_e = _step(eager, opt_e, *batches[0])
        sync(device)
        t0 = time.perf_counter()
        loss_c = _step(compiled, opt_c, *batches[0])
        sync(device)
        rec["compile_s"] = round(time.perf_counter() - t0, 2)
        rec["first_loss_rel_diff"] = float(((loss_c - loss_e).abs() / loss_e.abs()).item())
        _step(compiled, opt_c, *batches[0])  # a second call: any recompilation happens here, not in the timing
        times = interleaved_times({"eager": lambda: [_step(eager, opt_e, *b) for b in batches],
                                   "compiled": lambda: [_step(compiled, opt_c, *b) for b in batches]},
                                  repeats=rounds, warmup=0, device=device)
        for kind, clocks in times.items():
            rec[f"{kind}_ms"] = round(1e3 * median(clocks["wall"]) / steps, 2)
            rec[f"{kind}_cpu_ms"] = round(1e3 * median(clocks["cpu"]) / steps, 2)
        rec["speedup"] = round(rec["eager_ms"] / rec["compiled_ms"], 3)
        rec["speedup_cpu_time"] = round(rec["eager_cpu_ms"] / rec["compiled_cpu_ms"], 3)
    except Exception as e:  # a mixer that does not compile is a result, not the end of the sweep
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        rec["error"] = f"{type(e).__name__}: {first}"
    finally:
        torch._dynamo.reset()
    return rec


def markdown(records: list[dict], machine: dict) -> str:
    dev = machine.get("gpu") or f"{machine.get('cpu')} x{machine.get('cores')}"
    lines = [f"Machine: {dev}, torch {machine.get('torch')}, triton {machine.get('triton')}, "
             f"{machine.get('torch_threads')} CPU threads, load {machine.get('loadavg_1m_at_start')} at start, "
             f"git {machine.get('git')}", "",
             "Step = fwd + bwd + AdamW of the zoo's 2-layer model; times are medians of interleaved rounds "
             "(wall clock; CPU = this process's CPU time).", "",
             "| mixer | eager ms | compiled ms | speedup | speedup (CPU) | compile s | 1st loss rel. diff | error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "speedup" in r:
            lines.append(f"| `{r['mixer']}` | {r['eager_ms']} | {r['compiled_ms']} | {r['speedup']} | "
                         f"{r['speedup_cpu_time']} | {r['compile_s']} | {r['first_loss_rel_diff']:.2g} | |")
        else:
            lines.append(f"| `{r['mixer']}` | | | | | | | {r.get('error', '')} |")
    return "\n".join(lines) + "\n"


def run_compile_bench(mixers=None, *, preset="quick", device: str = "cpu", steps: int = 5, rounds: int = 3,
                      threads: int | None = None, out: str = "benchmarks/results/compile", backend: str = "inductor",
                      budget_s: float | None = None) -> list[dict]:
    """Every mixer (default: the zoo's default list for the preset), one record each; files under `out`.
    budget_s: no new mixer starts after that many seconds (the rest are recorded as skipped)."""
    from attnzoo.bench.zoo.models import default_mixers

    if threads:
        torch.set_num_threads(threads)
    mixers = list(mixers) if mixers else default_mixers(_preset(preset))
    start = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    dev = torch.device(device).type
    info = machine(device)
    path = os.path.join(out, f"compile_{dev}.jsonl")
    records = []
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(info) + "\n")
        for name in mixers:
            if budget_s is not None and records and time.perf_counter() - start > budget_s:
                rec = {"kind": "compile_step", "mixer": name, "device": device,
                       "error": f"skipped ({budget_s} s budget)"}
            else:
                rec = bench_mixer(name, preset=preset, device=device, steps=steps, rounds=rounds, backend=backend)
            records.append(rec)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            print(json.dumps(rec), flush=True)
    with open(os.path.join(out, f"compile_{dev}.md"), "w", encoding="utf-8") as f:
        f.write(markdown(records, info))
    return records
