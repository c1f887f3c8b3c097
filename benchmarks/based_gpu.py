"""Based on CUDA: checks and timings of the fixes for its slow bidirectional MiniLM student
(benchmarks/results/linearize/gpu/: 86 ms per forward at 512 tokens, 1.78 s at 32k in bf16).

Based's Taylor features are 1 + 16 + 256 = 273 per head; the Triton GLA path used to refuse K > 128,
so the torch chunked path ran on CUDA (its segments, sized for a CPU cache, are one 64-token chunk
each at 12 heads x 273: a dozen-plus launches per 64 tokens); its sliding-window branch built a T x T
mask (int64 relative positions: 8 GiB at 32k). Now Triton takes any K (blocks of 128 key channels),
the torch path's segments on CUDA are larger (chunk_layout.SEGMENT_ELEMENTS_CUDA) and a causal window
runs banded (ops/softmax/banded.py). This script measures, in one process:

  check   the new paths against references at real shapes: Triton GLA (K = 273, normalize=True)
          vs the float64 loop, forward and dq/dk/dv; banded window vs the dense masked SDPA
  op      the op timings, old path vs new: GLA torch with CPU-sized segments (old), torch with the
          CUDA segments, triton (forward; forward+backward), window
          dense vs banded (forward), B = 1, H = 12, head dim 32, w = 64, bf16
  minilm  MiniLM (6 layers, d 384, 12 heads; random weights: speed does not depend on them) with
          every self-attention a bidirectional Based, one sequence per forward, old dispatch
          (triton_supported refusing K > 128, CPU-sized segments, no banded window) vs new, plus the
          gla student; the paths that ran are counted in one untimed forward

    OMP_NUM_THREADS=4 PYTHONPATH=. python3 benchmarks/based_gpu.py --out $OUT      # GPU, < 6 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/based_gpu.py --smoke --out /tmp/based_smoke   # CPU check

Timing: attnzoo.bench.speed.do_bench_ms (triton.testing.do_bench median) on CUDA, the median of 3
perf_counter calls on CPU. Writes OUT/based_gpu.jsonl (one record per case, appended as it ends,
errors recorded, each with the machine line). Results go to benchmarks/results/based_cuda/.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import time

import torch

import attnzoo.ops.common.chunk_layout as chunk_layout
import attnzoo.ops.linear.triton.api as gla_triton_api
import attnzoo.ops.softmax.api as softmax_api
from attnzoo.bench.machine import machine_line
from attnzoo.bench.timing import ms_timer
from attnzoo.mixers._linear_common import taylor_feature_map
from attnzoo.ops.linear import gated_linear_attention
from attnzoo.ops.softmax.api import attention_allowed
from attnzoo.ops.softmax.banded import banded_window_attention
from attnzoo.ops.softmax.sdpa import softmax_attention_sdpa

H, HD, F, W = 12, 32, 16, 64
MINILM_CONFIG = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
                     layer_norm_eps=1e-12, pad_token_id=0, position_embedding_type="absolute")


def rel(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@contextlib.contextmanager
def cpu_segments():
    """The torch chunked path's segments sized for a CPU cache on CUDA too (as before the fixes)."""
    cap = chunk_layout.SEGMENT_ELEMENTS_CUDA
    chunk_layout.SEGMENT_ELEMENTS_CUDA = chunk_layout.SEGMENT_ELEMENTS
    try:
        yield
    finally:
        chunk_layout.SEGMENT_ELEMENTS_CUDA = cap


@contextlib.contextmanager
def old_dispatch():
    """The dispatch before the fixes: Triton GLA refuses K > 128, the torch path's segments are
    CPU-sized, a window always takes the dense mask."""
    supported, banded = gla_triton_api.triton_supported, softmax_api.use_banded
    gla_triton_api.triton_supported = lambda q, k, v, g=None, **kw: q.shape[-1] <= 128 and supported(q, k, v, g)
    softmax_api.use_banded = lambda *a: False
    try:
        with cpu_segments():
            yield
    finally:
        gla_triton_api.triton_supported, softmax_api.use_banded = supported, banded


@contextlib.contextmanager
def count_paths(counts: dict):
    """Counts calls of the Triton GLA entry (by K) and of the banded window op while active."""
    tri, band = gla_triton_api.triton_gated_linear_attention, softmax_api.banded_window_attention

    def tri_counted(q, *a, **kw):  # by K: a K = 273 call runs blocks of K = 128, 128, 17
        key = f"triton_gla_K{q.shape[-1]}"
        counts[key] = counts.get(key, 0) + 1
        return tri(q, *a, **kw)

    def band_counted(*a, **kw):
        counts["banded_window"] = counts.get("banded_window", 0) + 1
        return band(*a, **kw)
    gla_triton_api.triton_gated_linear_attention, softmax_api.banded_window_attention = tri_counted, band_counted
    try:
        yield counts
    finally:
        gla_triton_api.triton_gated_linear_attention, softmax_api.banded_window_attention = tri, band


def taylor_qkv(T, dtype, device, heads=H, f=F, hd=HD, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)
    r = lambda *s: torch.randn(*s, device=device, generator=gen)  # noqa: E731
    q = taylor_feature_map(0.5 * r(1, T, heads, f)).to(dtype)
    k = taylor_feature_map(0.5 * r(1, T, heads, f)).to(dtype)
    return q, k, r(1, T, heads, hd).to(dtype)


def dense_window(q, k, v):
    allowed = attention_allowed(1, q.shape[1], k.shape[1], device=q.device, causal=True, window=W)
    return softmax_attention_sdpa(q, k, v, allowed=allowed, is_causal=False, scale=q.shape[-1] ** -0.5)


def fwd_bwd_grads(fn, ins, do):
    ins = [t.detach().clone().requires_grad_(True) for t in ins]
    o = fn(*ins)
    torch.autograd.backward(o, do.to(o.dtype))
    return o, [t.grad for t in ins]


def checks(device, dtypes, T_gla, T_win):
    impl = "triton" if device == "cuda" else "torch"
    for dtype in dtypes:
        dt = getattr(torch, dtype)
        q, k, v = taylor_qkv(T_gla, dt, device)
        do = torch.randn(1, T_gla, q.shape[2], v.shape[-1], device=device)
        o, g = fwd_bwd_grads(lambda q, k, v: gated_linear_attention(q, k, v, scale=1.0, normalize=True, impl=impl)[0],
                             (q, k, v), do)
        o_r, g_r = fwd_bwd_grads(
            lambda q, k, v: gated_linear_attention(q, k, v, scale=1.0, normalize=True, impl="reference")[0],
            (q.double(), k.double(), v.double()), do.double())
        yield {"case": "check_gla_k273_normalized", "impl": impl, "dtype": dtype, "T": T_gla, "K": q.shape[-1],
               "rel_o": rel(o, o_r), **{f"rel_{n}": rel(a, b) for n, a, b in zip(("dq", "dk", "dv"), g, g_r)}}
        gen = torch.Generator(device=device).manual_seed(1)
        qw, kw, vw = (torch.randn(1, T_win, H, HD, device=device, generator=gen).to(dt) for _ in range(3))
        dow = torch.randn(1, T_win, H, HD, device=device)
        o, g = fwd_bwd_grads(lambda q, k, v: banded_window_attention(q, k, v, window=W, scale=HD ** -0.5),
                             (qw, kw, vw), dow)
        o_r, g_r = fwd_bwd_grads(dense_window, (qw, kw, vw), dow)
        yield {"case": "check_window_banded_vs_dense", "dtype": dtype, "T": T_win, "window": W, "rel_o": rel(o, o_r),
               **{f"rel_{n}": rel(a, b) for n, a, b in zip(("dq", "dk", "dv"), g, g_r)}}


def op_cases(device, lengths, dtype, max_T_slow):
    """(record, fn) pairs of the op timings; fn None where the case is skipped."""
    dt = getattr(torch, dtype)
    fast = "triton" if device == "cuda" else "torch"
    for T in lengths:
        q, k, v = taylor_qkv(T, dt, device)
        # the old path: torch chunked with CPU-sized segments; torch with the CUDA segments; triton
        for impl, segs in dict.fromkeys((("torch", "cpu"), ("torch", "cuda"), (fast, "cuda"))):
            for mode in ("fwd", "fwd_bwd"):
                rec = {"case": "op_gla_k273_normalized", "impl": impl, "segments": segs, "mode": mode,
                       "dtype": dtype, "T": T}
                if impl == "torch" and segs == "cpu" and device == "cuda" and T > max_T_slow:
                    yield {**rec, "error": f"skipped: old path beyond T={max_T_slow}"}, None
                    continue
                ins = [t.detach().clone().requires_grad_(mode == "fwd_bwd") for t in (q, k, v)]

                def fn(ins=ins, impl=impl, mode=mode, segs=segs):
                    with torch.set_grad_enabled(mode == "fwd_bwd"), (
                            cpu_segments() if segs == "cpu" else contextlib.nullcontext()):
                        o, _ = gated_linear_attention(*ins, scale=1.0, normalize=True, impl=impl)
                        if mode == "fwd_bwd":
                            o.sum().backward()
                yield rec, fn
        qw, kw, vw = (torch.randn(1, T, H, HD, device=device, dtype=dt) for _ in range(3))
        for path in ("dense", "banded"):
            rec = {"case": "op_window", "path": path, "mode": "fwd", "dtype": dtype, "T": T, "window": W}
            if path == "dense" and T > max_T_slow:
                yield {**rec, "error": f"skipped: dense T x T mask beyond T={max_T_slow}"}, None
                continue

            def fn(path=path):
                with torch.no_grad():
                    if path == "dense":
                        dense_window(qw, kw, vw)
                    else:
                        banded_window_attention(qw, kw, vw, window=W, scale=HD ** -0.5)
            yield rec, fn


def minilm(device, dtype, max_len):
    from transformers import BertConfig, BertModel

    from attnzoo.distill.hf_adapter import replace_attention
    from attnzoo.distill.minilm import extend_positions

    torch.manual_seed(0)
    teacher = BertModel(BertConfig(**MINILM_CONFIG, attn_implementation="sdpa")).to(device).eval()
    out = {}
    for name in ("based", "gla"):
        student = copy.deepcopy(teacher)
        torch.manual_seed(0)
        replace_attention(student, name)
        out[name] = extend_positions(student, max_len).eval().to(getattr(torch, dtype))
    return out


def minilm_cases(device, lengths, dtypes, max_T_old):
    for dtype in dtypes:
        models = minilm(device, dtype, max(lengths))
        for T in lengths:
            x = torch.randint(1000, 20000, (1, T), device=device)
            for student, dispatch in (("based", "old"), ("based", "new"), ("gla", "new")):
                rec = {"case": "minilm_forward", "student": student, "dispatch": dispatch, "dtype": dtype, "T": T}
                if dispatch == "old" and T > max_T_old:
                    yield {**rec, "error": f"skipped: old dispatch beyond T={max_T_old}"}, None
                    continue
                model = models[student]

                def fn(model=model, x=x, dispatch=dispatch):
                    with torch.no_grad(), (old_dispatch() if dispatch == "old" else contextlib.nullcontext()):
                        model(input_ids=x)
                counts = {}
                try:
                    with count_paths(counts):
                        fn()
                    rec["paths"] = counts
                except Exception as e:
                    rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                yield rec, fn


def run(args):
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "based_gpu.jsonl")
    machine, timer, started = machine_line(device), ms_timer(device), time.time()
    if args.smoke:
        lengths, T_gla, T_win, max_slow, dtypes = (64, 160), 40, 160, 64, ("float32",)
    else:
        lengths, T_gla, T_win, max_slow, dtypes = args.lengths, 1024, 4096, 8192, args.dtypes
    records = []

    def emit(rec):
        rec.update(device=device, machine=machine)
        records.append(rec)
        with open(path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    def timed(cases):
        for rec, fn in cases:
            if fn is not None and "error" not in rec:
                if time.time() - started > args.budget_s:
                    rec["error"] = f"skipped: time budget {args.budget_s} s spent"
                else:
                    try:
                        rec["ms"] = round(timer(fn), 3)
                        if device == "cuda":
                            torch.cuda.reset_peak_memory_stats()
                            fn()
                            rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                    except Exception as e:  # out of memory is a result
                        rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    if device == "cuda":
                        torch.cuda.empty_cache()
            emit(rec)

    if "check" in args.parts:
        for rec in checks(device, ("float32",) if args.smoke else ("bfloat16", "float32"), T_gla, T_win):
            emit(rec)
    if "op" in args.parts:
        timed(op_cases(device, lengths, dtypes[0], max_slow))
    if "minilm" in args.parts:
        timed(minilm_cases(device, lengths, dtypes, max_slow))
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", type=lambda s: s.split(","), default=["check", "op", "minilm"])
    ap.add_argument("--lengths", type=lambda s: [int(v) for v in s.split(",")], default=[512, 2048, 8192, 32768])
    ap.add_argument("--dtypes", type=lambda s: s.split(","), default=["bfloat16", "float32"])
    ap.add_argument("--budget-s", type=float, default=300.0, help="timed cases after this many seconds are skipped")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny lengths, float32 (checks the script)")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
