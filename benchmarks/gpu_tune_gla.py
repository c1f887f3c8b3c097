"""Launch-config sweep of the Triton GLA op on the GPU, in one process, then a kernel profile of the
best config (issue 7: which state-pass layout and warps are fastest at each T).

    python benchmarks/gpu_tune_gla.py [--shapes 4096x4,8192x2,16384x1,32768x1] [--out $OUT]

Variants set triton_chunk.TUNE, triton_state's segment rule and triton_vector_fast.FACTOR_F32
(each distinct config compiles once, ~1-3 s per kernel). Times fwd+bwd of the scalar and vector
gate (bf16, D = 128, H = 16, GLA-like gates) with do_bench medians, plus baselines in the same
process (cuDNN SDPA as the anchor for comparing runs; fla's chunk_simple_gla / chunk_gla with
--baselines, fla's Hopper guard lifted for speed only). Writes tune.jsonl and profile.txt under
--out and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from attnzoo.bench.speed import fla_module, machine_line, make_call, measure, parse_shapes  # noqa: E402
from attnzoo.ops.linear.triton import chunk as triton_chunk, state as triton_state  # noqa: E402
from attnzoo.ops.linear.triton import vector_fast as triton_vector_fast  # noqa: E402

VARIANTS = {
    "base": {},
    "noseg": {"MIN_PROGRAMS": 0},
    "st2": {"state_stages": 2, "state_stages_vector": 2},
    "sw8": {"state_warps": 8},
    "w8": {"state_warps": 8, "scalar_out_warps": 8},
    "bk32": {"state_bk": 32},
    "seg16": {"MIN_SEGMENT": 16, "MAX_SEGMENTS": 16},
    "f32off": {"FACTOR_F32": False},
    "unfused": {"scalar_fused_dg": False},
    "st2_unfused": {"state_stages": 2, "scalar_fused_dg": False},
    "st3v": {"state_stages_vector": 3},
    "vfused": {"vector_fused_dg": True},
    "vbv64": {"state_bv_vector": 64},
    "vbv128": {"state_bv_vector": 128, "state_warps_vector": 8},
    "vfused_bv64": {"vector_fused_dg": True, "state_bv_vector": 64},
}


@contextlib.contextmanager
def variant(settings: dict):
    mods = {"MIN_PROGRAMS": triton_state, "MIN_SEGMENT": triton_state, "MAX_SEGMENTS": triton_state,
            "FACTOR_F32": triton_vector_fast}
    saved_tune = dict(triton_chunk.TUNE)
    saved = {k: getattr(m, k) for k, m in mods.items()}
    for k, v in settings.items():
        if k in mods:
            setattr(mods[k], k, v)
        else:
            triton_chunk.TUNE[k] = v
    try:
        yield
    finally:
        triton_chunk.TUNE.clear()
        triton_chunk.TUNE.update(saved_tune)
        for k, m in mods.items():
            setattr(m, k, saved[k])


def profile(provider, s, out):
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as prof

    fn = make_call(provider, s, "fwdbwd")[0]
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    with prof(activities=[ProfilerActivity.CUDA]) as p:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
    table = p.key_averages().table(sort_by="cuda_time_total", row_limit=16)
    out.write(f"\n## {provider} T={s.T} B={s.B} (5 calls)\n{table}\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="4096x4,8192x2,16384x1,32768x1")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--baselines", default="sdpa_cudnn", help="e.g. sdpa_cudnn,fla_simple_gla,fla_gla")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    a = ap.parse_args()
    baselines = a.baselines.split(",")
    fla = fla_module() if any(b.startswith("fla_") for b in baselines) else None
    os.makedirs(a.out, exist_ok=True)
    shapes = parse_shapes(a.shapes)
    machine = machine_line()
    recs = []
    with open(os.path.join(a.out, "tune.jsonl"), "w") as f:
        f.write(json.dumps({"machine": machine}) + "\n")
        def record(r, name):
            r["variant"] = name
            recs.append(r)
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(f"{name:11s} {r['provider']:15s} T={r['T']:6d} {r.get('ms', float('nan')):7.3f} ms "
                  f"{r.get('error', '')}", flush=True)

        for s in shapes:  # shape by shape: a run cut short still has whole rows
            for name in a.variants.split(","):
                for provider in ("attnzoo_scalar", "attnzoo_vector"):
                    if name == "f32off" and provider == "attnzoo_scalar":
                        continue
                    with variant(VARIANTS[name]):
                        record(measure(provider, s, "fwdbwd"), name)
            for b in baselines:
                r = measure(b, s, "fwdbwd", fla=fla)
                if r is not None:
                    record(r, "-")
    best = {}
    for provider in ("attnzoo_scalar", "attnzoo_vector"):
        score = {}
        for name in a.variants.split(","):
            ms = [r["ms"] for r in recs if r["provider"] == provider and r["variant"] == name and "ms" in r]
            if len(ms) == len(shapes):
                score[name] = math.exp(sum(math.log(x) for x in ms) / len(ms))
        best[provider] = min(score, key=score.get) if score else "base"
    if not a.no_profile:
        with open(os.path.join(a.out, "profile.txt"), "w") as out:
            out.write(f"{machine}\nbest by geometric mean over shapes: {best}\n")
            for provider, name in best.items():
                with variant(VARIANTS[name]):
                    for s in (shapes[1], shapes[-1]):
                        profile(provider, s, out)
    cols = [f"T={s.T}" for s in shapes]
    print(f"\n{machine}\n{'variant':11s} {'provider':15s} " + " ".join(f"{c:>8s}" for c in cols))
    for name in ["-"] + a.variants.split(","):
        for provider in (*baselines, "attnzoo_scalar", "attnzoo_vector"):
            row = [r for r in recs if r["variant"] == name and r["provider"] == provider]
            if row:
                print(f"{name:11s} {provider:15s} " + " ".join(f"{r.get('ms', float('nan')):8.3f}" for r in row))
    print("best:", best)


if __name__ == "__main__":
    main()
