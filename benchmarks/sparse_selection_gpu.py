"""GPU checks and timings of the block selection of block top-k sparse attention (issue #16): the fused
Triton selection (ops/sparse/triton/block_select.py) against the torch one (the reference), alone, with
the attention kernel, and in a decode step with the pooled keys kept incrementally.

    python benchmarks/sparse_selection_gpu.py OUT_DIR            # a CUDA machine (about 4-6 minutes on an H100)
    python benchmarks/sparse_selection_gpu.py OUT_DIR --smoke    # tiny shapes on the CPU (Triton interpreter)

bf16, H=16, D=128, blocks of 64 and 128, ~1/16 of the key blocks (top-k + 1 sink + 2 local blocks, SSA's
softmax score; one Kinetics logits case), as benchmarks/sparse_gpu.py. Per case:
- check: block ids/counts of the fused selection vs the torch selection: the share of (b, h, m) rows with
  the same selected set, and for rows that differ the largest relative gap between the torch scores of
  the two sets (a near-tie of float32 rounding gives ~1e-6; a wrong kernel gives O(1));
- prefill (B·T = 16k tokens, T = 2k, 16k, 64k): pooled keys + block queries alone ("pool"), the selection
  from them (torch, fused), the attention kernel alone over a fixed selection ("kernel"), the whole forward
  (pool + selection + kernel) with each selection, and cuDNN dense causal forward;
- decode (B=8, L=128k): the selection from cached pooled keys (torch, fused), the decode kernel alone,
  pooling the whole cache (what a step did before the state kept pooled keys) vs update_pooled_keys (the
  block a step completes), the whole step before (whole-cache pooling + torch selection + kernel) and after
  (incremental pooling + fused selection + kernel), and dense SDPA decode (best of flash / efficient / cuDNN).
Times are medians of triton.testing.do_bench (attnzoo.bench.speed.do_bench_ms). Every case is its own
try/except; OUT_DIR/sparse_selection_gpu.json (machine line, records) is rewritten after each; a time budget
(--budget seconds, default 400) skips what is left once spent.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnzoo.bench.cases import CaseLog, script_args  # noqa: E402
from attnzoo.bench.machine import machine_line  # noqa: E402
from attnzoo.bench.timing import ms_timer  # noqa: E402
from attnzoo.ops.sparse import (  # noqa: E402
    block_queries,
    block_sparse_attention,
    block_sparse_decode,
    candidate_scores,
    pooled_block_keys,
    select_blocks,
    selected_block_mask,
    update_pooled_keys,
)
from attnzoo.ops.sparse.reference import counted_ids  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
DT = torch.float32 if SMOKE else torch.bfloat16  # the interpreter's tl.dot is wrong in bf16 (api.py)
H, D = (2, 16) if SMOKE else (16, 128)
SINK, LOCAL = 1, 2
T0 = time.time()
LOG: CaseLog | None = None  # main() makes it
FUSED = ["triton"]  # the fused selection's impl; "torch" if the probe case finds it broken (torch numbers still come)
MACHINE = {"machine": machine_line(DEV), "dtype": str(DT), "H": H, "D": D, "smoke": SMOKE}


bench = ms_timer(DEV, cpu_repeats=1, cpu_warmup=0)  # smoke: one interpreter call, meaningless as a time


def top_k_for(n_blocks: int) -> int:
    """top_k giving ~1/16 of the key blocks with the sink and local blocks."""
    return max(1, round(n_blocks / 16) - SINK - LOCAL)


def compare(sel_a, sel_b, scores) -> dict:
    """Selections (ids, counts) a (torch) and b (fused) over the same rows; scores [B, Hkv, M, N] the torch
    candidate scores. Returns the share of rows with one selected set and the worst relative score gap."""
    (ia, ca), (ib, cb) = sel_a, sel_b
    N = scores.shape[-1]
    ma = selected_block_mask(counted_ids(ia, ca), N)
    mb = selected_block_mask(counted_ids(ib, cb), N)
    same = (ma == mb).all(-1)
    res = {"rows": same.numel(), "rows_same": int(same.sum()), "share_same": same.float().mean().item(),
           "counts_equal": bool(torch.equal(ca, cb))}
    if not bool(same.all()):
        s = torch.where(torch.isfinite(scores), scores, torch.zeros_like(scores))  # forced blocks score 0 in both
        sa, sb = (torch.where(m, s, torch.zeros_like(s)).sum(-1) for m in (ma, mb))
        gap = ((sa - sb).abs() / sa.abs().clamp_min(1e-30))[~same]
        res["worst_rel_score_gap"] = gap.max().item()
    res["ok"] = res["counts_equal"] and (res["share_same"] == 1.0 or res.get("worst_rel_score_gap", 0) < 1e-4)
    return res


def probe_fused() -> dict:
    """One small fused selection against torch; a failure switches the fused timings to torch (FUSED)."""
    g = torch.Generator(device=DEV).manual_seed(0)
    q, k = (torch.randn(1, 512, H, D, device=DEV, generator=g).to(DT) for _ in range(2))
    kw = {"top_k": 2, "sink_blocks": SINK, "local_blocks": LOCAL}
    try:
        a = select_blocks(block_queries(q, 16), pooled_block_keys(k, None, 16), impl="torch", **kw)
        b = select_blocks(block_queries(q, 16), pooled_block_keys(k, None, 16), impl="triton", **kw)
        return {"fused_works": True, "ids_equal": bool(torch.equal(a[0], b[0]))}
    except Exception as e:
        FUSED[0] = "torch"
        traceback.print_exc(limit=6)
        return {"fused_works": False, "error": f"{type(e).__name__}: {e}"[:800]}


def prefill_case(T: int, bs: int, Hkv: int, score: str) -> dict:
    B = max(1, (256 if SMOKE else 16384) // T)
    g = torch.Generator(device=DEV).manual_seed(T + bs)
    q = torch.randn(B, T, H, D, device=DEV, generator=g).to(DT)
    k, v = (torch.randn(B, T, Hkv, D, device=DEV, generator=g).to(DT) for _ in range(2))
    M = -(-T // bs)
    tk = top_k_for(M)
    kw = {"top_k": tk, "sink_blocks": SINK, "local_blocks": LOCAL, "score": score}

    def pool():
        return block_queries(q, bs), pooled_block_keys(k, None, bs)

    qrep, kbar = pool()
    res = {"B": B, "T": T, "bs": bs, "Hkv": Hkv, "score": score, "top_k": tk, "n_blocks": M, "fused": FUSED[0]}
    sel_t = select_blocks(qrep, kbar, impl="torch", **kw)
    sel_f = select_blocks(qrep, kbar, impl=FUSED[0], **kw)
    res.update(compare(sel_t, sel_f, candidate_scores(qrep, kbar, sink_blocks=SINK, local_blocks=LOCAL,
                                                       score=score)))
    res["density"] = sel_t[1].float().mean().item() / M
    ids, cnt = sel_f

    def whole(impl):
        def f():
            qr, kb = pool()
            i, c = select_blocks(qr, kb, impl=impl, **kw)
            return block_sparse_attention(q, k, v, i, c, block_size=bs, impl="triton")
        return f

    with torch.no_grad():
        res["pool_ms"] = bench(pool)
        res["sel_torch_ms"] = bench(lambda: select_blocks(qrep, kbar, impl="torch", **kw))
        res["sel_fused_ms"] = bench(lambda: select_blocks(qrep, kbar, impl=FUSED[0], **kw))
        res["kernel_ms"] = bench(lambda: block_sparse_attention(q, k, v, ids, cnt, block_size=bs, impl="triton"))
        res["fwd_torch_sel_ms"] = bench(whole("torch"))
        res["fwd_fused_sel_ms"] = bench(whole(FUSED[0]))
        if Hkv == H:
            qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))

            def dense():
                return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)

            try:
                if SMOKE:  # the CPU's SDPA (no cuDNN there)
                    res["cudnn_fwd_ms"] = bench(dense)
                else:
                    with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.CUDNN_ATTENTION]):
                        res["cudnn_fwd_ms"] = bench(dense)
            except Exception as e:
                res["cudnn_error"] = f"{type(e).__name__}: {e}"[:300]
    res["sel_speedup"] = res["sel_torch_ms"] / res["sel_fused_ms"]
    if "cudnn_fwd_ms" in res:
        for name in ("kernel", "fwd_torch_sel", "fwd_fused_sel"):
            res[f"cudnn_over_{name}"] = res["cudnn_fwd_ms"] / res[f"{name}_ms"]
    return res


def decode_case(B: int, L: int, bs: int, Hkv: int, score: str) -> dict:
    g = torch.Generator(device=DEV).manual_seed(L + bs)
    k, v = (torch.randn(B, L, Hkv, D, device=DEV, generator=g).to(DT) for _ in range(2))
    q = torch.randn(B, H, D, device=DEV, generator=g).to(DT)
    lens = torch.full((B,), L, device=DEV, dtype=torch.long)
    lens[0] = L - bs // 2  # one row ends inside a block
    valid = torch.arange(L, device=DEV)[None] < lens[:, None]
    kbar_all = pooled_block_keys(k, valid, bs)  # [B, ceil(L / bs), Hkv, D]: what a step pooled before
    kdone = kbar_all[:, : L // bs].contiguous()  # the pooled keys a state keeps
    qb = ((lens - 1) // bs)[:, None]
    n_blocks = -(-L // bs)
    tk = top_k_for(n_blocks)
    kw = {"top_k": tk, "sink_blocks": SINK, "local_blocks": LOCAL, "score": score, "q_block": qb}
    res = {"B": B, "L": L, "bs": bs, "Hkv": Hkv, "score": score, "top_k": tk, "n_blocks": n_blocks,
           "fused": FUSED[0]}
    sel_t = select_blocks(q[:, None], kbar_all, impl="torch", **kw)
    sel_f = select_blocks(q[:, None], kbar_all, impl=FUSED[0], **kw)
    res.update(compare(sel_t, sel_f, candidate_scores(q[:, None], kbar_all, sink_blocks=SINK, local_blocks=LOCAL,
                                                       score=score, q_block=qb)))
    ids, cnt = sel_f[0][:, :, 0], sel_f[1][:, :, 0]
    done = lens % bs == 0
    old = kdone.clone()
    old[done, -1] = 0  # the step's token completes the last block of these rows: it is pooled in the step

    def step_before():
        kb = pooled_block_keys(k, valid, bs)
        i, c = select_blocks(q[:, None], kb, impl="torch", **kw)
        return block_sparse_decode(q, k, v, i[:, :, 0], c[:, :, 0], lens, block_size=bs, impl="triton")

    def step_after():
        kd = update_pooled_keys(old, k, lens, done, bs)
        kb = F.pad(kd, (0, 0, 0, 0, 0, n_blocks - kd.shape[1]))
        i, c = select_blocks(q[:, None], kb, impl=FUSED[0], **kw)
        return block_sparse_decode(q, k, v, i[:, :, 0], c[:, :, 0], lens, block_size=bs, impl="triton")

    inc = update_pooled_keys(old, k, lens, done, bs)
    n_done = lens // bs
    res["incremental_pool_equal"] = all(torch.allclose(inc[b, : n_done[b]].float(), kdone[b, : n_done[b]].float(),
                                                       rtol=1e-2, atol=1e-2) for b in range(B))
    o_b, o_a = step_before(), step_after()
    res["step_outputs_rel_diff"] = ((o_a.float() - o_b.float()).norm() / o_b.float().norm()).item()
    with torch.no_grad():
        res["sel_torch_ms"] = bench(lambda: select_blocks(q[:, None], kbar_all, impl="torch", **kw))
        res["sel_fused_ms"] = bench(lambda: select_blocks(q[:, None], kbar_all, impl=FUSED[0], **kw))
        res["kernel_ms"] = bench(lambda: block_sparse_decode(q, k, v, ids, cnt, lens, block_size=bs, impl="triton"))
        res["pool_whole_ms"] = bench(lambda: pooled_block_keys(k, valid, bs))
        res["pool_incremental_ms"] = bench(lambda: update_pooled_keys(old, k, lens, done, bs))
        res["step_before_ms"] = bench(step_before)
        res["step_after_ms"] = bench(step_after)
        if Hkv == H:
            qh, kh, vh = q[:, :, None], k.transpose(1, 2), v.transpose(1, 2)
            for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
                try:
                    if SMOKE:
                        res[f"dense_{name.lower()}_ms"] = bench(lambda: F.scaled_dot_product_attention(qh, kh, vh))
                        break
                    with torch.nn.attention.sdpa_kernel([getattr(torch.nn.attention.SDPBackend, name)]):
                        res[f"dense_{name.lower()}_ms"] = bench(lambda: F.scaled_dot_product_attention(qh, kh, vh))
                except Exception as e:
                    res[f"dense_{name.lower()}_error"] = f"{type(e).__name__}: {e}"[:200]
    res["sel_speedup"] = res["sel_torch_ms"] / res["sel_fused_ms"]
    res["step_speedup"] = res["step_before_ms"] / res["step_after_ms"]
    dense = [x for n, x in res.items() if n.startswith("dense_") and n.endswith("_ms")]
    if dense:
        res["best_dense_ms"] = min(dense)
        for name in ("kernel", "step_before", "step_after"):
            res[f"dense_over_{name}"] = min(dense) / res[f"{name}_ms"]
    res["ok"] = res["ok"] and res["incremental_pool_equal"]
    return res


def report():
    def f(r, key):
        return f" {r[key]:8.3f}" if key in r else "        -"

    print("\nprefill (ms)        T   bs Hkv | pool  sel_torch sel_fused | kernel fwd(torch sel) fwd(fused sel) cudnn")
    for r in LOG.records:
        if r["case"].startswith("prefill") and "kernel_ms" in r:
            print(f"{r['case'][8:]:>24s} |{f(r, 'pool_ms')}{f(r, 'sel_torch_ms')}{f(r, 'sel_fused_ms')} |"
                  f"{f(r, 'kernel_ms')}{f(r, 'fwd_torch_sel_ms')}{f(r, 'fwd_fused_sel_ms')}{f(r, 'cudnn_fwd_ms')}")
    print("\ndecode (ms)                | sel_torch sel_fused kernel | pool_whole pool_inc | step_before step_after "
          "dense")
    for r in LOG.records:
        if r["case"].startswith("decode") and "kernel_ms" in r:
            print(f"{r['case'][7:]:>26s} |{f(r, 'sel_torch_ms')}{f(r, 'sel_fused_ms')}{f(r, 'kernel_ms')} |"
                  f"{f(r, 'pool_whole_ms')}{f(r, 'pool_incremental_ms')} |{f(r, 'step_before_ms')}"
                  f"{f(r, 'step_after_ms')}{f(r, 'best_dense_ms')}")
    bad = [r["case"] for r in LOG.records if r.get("ok") is False or "error" in r]
    print("FAILED CHECKS / CASES WITH ERRORS (see the JSON):", bad or "none")
    print("skipped (time budget):", [r["case"] for r in LOG.records if "skipped" in r] or "none")


def main():
    a = script_args(__doc__, budget=400.0)
    global LOG
    LOG = CaseLog(a.out / "sparse_selection_gpu.json", MACHINE, budget_s=a.budget, t0=T0)
    print(MACHINE, flush=True)
    if SMOKE:
        torch.set_num_threads(1)
    s = 4 if SMOKE else 1024  # T unit
    blocks = (16, 32) if SMOKE else (64, 128)
    L = 32 * s if SMOKE else 128 * s
    Bd = 2 if SMOKE else 8
    cases = [(f"prefill T={64 * s} bs={blocks[0]} Hkv={H}", lambda: prefill_case(64 * s, blocks[0], H, "softmax")),
             (f"prefill T={64 * s} bs={blocks[1]} Hkv={H}", lambda: prefill_case(64 * s, blocks[1], H, "softmax")),
             (f"decode B={Bd} L={L} bs={blocks[0]} Hkv={H}", lambda: decode_case(Bd, L, blocks[0], H, "softmax")),
             (f"decode B={Bd} L={L} bs={blocks[1]} Hkv={H}", lambda: decode_case(Bd, L, blocks[1], H, "softmax"))]
    for T in (2 * s, 16 * s):
        for bs in blocks:
            cases.append((f"prefill T={T} bs={bs} Hkv={H}", lambda T=T, bs=bs: prefill_case(T, bs, H, "softmax")))
    hg = max(1, H // 4)
    cases += [(f"prefill T={64 * s} bs={blocks[0]} Hkv={hg} (GQA)", lambda: prefill_case(64 * s, blocks[0], hg,
                                                                                        "softmax")),
              (f"prefill T={16 * s} bs={blocks[0]} Hkv={H} logits", lambda: prefill_case(16 * s, blocks[0], H,
                                                                                        "logits")),
              (f"decode B={Bd} L={L} bs={blocks[0]} Hkv={hg} (GQA) logits", lambda: decode_case(Bd, L, blocks[0], hg,
                                                                                              "logits"))]
    LOG.run("probe fused selection", probe_fused)
    for name, fn in cases:
        LOG.run(name, fn)
    report()
    print(f"done in {time.time() - T0:.0f} s; results in {a.out / 'sparse_selection_gpu.json'}")


if __name__ == "__main__":
    main()
