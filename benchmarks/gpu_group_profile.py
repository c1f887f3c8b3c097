"""Where a zoo group step's GPU time goes (issue #23's 10x goal): the device kernels of one training step of a
model group (attnzoo.train.group_step.GroupStep, eager: a replayed CUDA graph hides its kernels from the
profiler), by total time and by kind, against the step's eager and graphed wall time.

    python3 benchmarks/gpu_group_profile.py OUT_DIR [--mixers softmax,gla] [--d-model 64] [--seq-len 64]
    python3 benchmarks/gpu_group_profile.py OUT_DIR --smoke          # CPU: CPU ops instead of kernels, tiny

The paper preset's models and MQAR batch (Zoology's: 512 at T = 64), a group of --group-size models. A graphed
step whose time is close to the kernels' sum is GPU-bound: more members or processes cannot help it, only
fewer bytes (fusion, bf16) or fewer kernels can; the kinds say which. --pad-narrow runs the mixers' narrow
projections (AlignedLinear) on padded widths, to time that against the default. Writes OUT_DIR/group_profile.json
(machine line, per mixer: eager and graph ms per step, kernel ms per step by kind and the top kernels).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnzoo.bench.cases import CaseLog, script_args  # noqa: E402
from attnzoo.bench.machine import machine_line  # noqa: E402
from attnzoo.bench.zoo.presets import get_preset  # noqa: E402
from attnzoo.bench.timing import device_us, sync  # noqa: E402
from attnzoo.bench.zoo.throughput import case_spec, group_stepper, time_steps  # noqa: E402

# kernel kinds, by the first pattern found in the kernel's name (lower case)
KINDS = (("gemm", ("gemm", "matmul", "cutlass", "sm90_", "ampere_", "cublas", "nvjet")),
         ("attention", ("flash", "fmha", "attention", "sdpa", "cudnn")),
         ("triton", ("triton_",)),
         ("softmax / cross-entropy", ("softmax", "nll_loss", "cross_entropy", "log_softmax")),
         ("reduction", ("reduce", "norm")),
         ("copy / cast / index", ("copy", "cat", "index", "gather", "scatter", "embedding", "fill")),
         ("elementwise", ("elementwise", "vectorized", "unrolled")))


def kind_of(name: str) -> str:
    low = name.lower()
    return next((k for k, pats in KINDS if any(p in low for p in pats)), "other")


def profile_mixer(mixer: str, *, d_model: int, seq_len: int, group_size: int, smoke: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile

    dev = "cpu" if smoke else "cuda"
    preset = get_preset("paper")
    spec = case_spec(mixer, d_model, seq_len, preset.vocab_size, batch=8 if smoke else None)
    steps = 2 if smoke else 10
    stepper, lr, idx = group_stepper(spec, preset, device=dev, group_size=group_size, graph=False, n_idx=3 + steps)
    out = {"mixer": mixer, "d_model": d_model, "seq_len": seq_len, "batch": spec["batch"], "group_size": group_size,
           "eager_ms": time_steps(stepper, lr, idx, warmup=3, device=dev) * 1e3}
    with profile(activities=[ProfilerActivity.CPU] if smoke else [ProfilerActivity.CUDA]) as prof:
        for i in range(3, 3 + steps):
            stepper.step(idx[i], lr)
        sync(dev)
    rows = []
    for e in prof.key_averages():
        us = e.self_cpu_time_total if smoke else device_us(e)
        if us > 0:
            rows.append({"name": e.key[:100], "kind": kind_of(e.key), "ms": us / 1e3 / steps,
                         "launches": e.count / steps})
    rows.sort(key=lambda r: -r["ms"])
    by_kind: dict[str, dict] = {}
    for r in rows:
        k = by_kind.setdefault(r["kind"], {"ms": 0.0, "launches": 0.0})
        k["ms"] += r["ms"]
        k["launches"] += r["launches"]
    out.update(kernel_ms=sum(r["ms"] for r in rows), launches=sum(r["launches"] for r in rows),
               by_kind=dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["ms"])), top=rows[:25])
    if not smoke:
        g, lr_g, idx_g = group_stepper(spec, preset, device=dev, group_size=group_size, graph=True, n_idx=6 + steps)
        ms = time_steps(g, lr_g, idx_g, warmup=6, device=dev) * 1e3
        out["graph_ms"] = ms if g.graph is not None else g.graph_note
    return out


def main():
    a = script_args(__doc__, extra=lambda ap: (
        ap.add_argument("--mixers", default="softmax,gla,gated_deltanet"),
        ap.add_argument("--d-model", type=int, default=64), ap.add_argument("--seq-len", type=int, default=64),
        ap.add_argument("--group-size", type=int, default=4),
        ap.add_argument("--pad-narrow", action="store_true", help="mixers.layers.NARROW['pad'] = 'always': the "
                        "narrow projections' GEMMs on widths padded to multiples of 8 (AlignedLinear)")))
    if a.pad_narrow:
        from attnzoo.mixers import layers

        layers.NARROW["pad"] = "always"
    dev = "cpu" if a.smoke else "cuda"
    log = CaseLog(a.out / "group_profile.json", {"machine": machine_line(dev), "pad_narrow": a.pad_narrow})
    res = {m: log.run(m, lambda m=m: profile_mixer(m, d_model=a.d_model, seq_len=a.seq_len,
                                                   group_size=a.group_size, smoke=a.smoke))
           for m in a.mixers.split(",")}
    print(f"\nmachine: {machine_line(dev)}")
    for m, r in res.items():
        if "kernel_ms" not in r:
            continue
        gm = r.get("graph_ms")
        print(f"\n{m}, d={r['d_model']} T={r['seq_len']} B={r['batch']} G={r['group_size']}: eager {r['eager_ms']:.2f} "
              f"ms/step, graph {gm if not isinstance(gm, float) else f'{gm:.2f}'} ms, kernels {r['kernel_ms']:.2f} ms "
              f"in {r['launches']:.0f} launches")
        for k, v in r["by_kind"].items():
            print(f"  {v['ms']:7.3f} ms  x{v['launches']:<5.0f} {k}")
        for x in r["top"][:8]:
            print(f"    {x['ms']:7.3f} ms  x{x['launches']:<4g} {x['name'][:80]}")
    print("errors:", log.failed() or "none")


if __name__ == "__main__":
    main()
