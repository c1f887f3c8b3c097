"""GPU checks and timings for issue #16: Triton block top-k sparse attention and the fused G1 gate.

    python benchmarks/sparse_gpu.py OUT_DIR            # on a CUDA machine (about 6 minutes on an H100)
    python benchmarks/sparse_gpu.py OUT_DIR --smoke    # tiny shapes on the CPU (Triton interpreter)

(a) Checks every kernel against the plain float32 reference at real shapes (bf16, H=16, D=128, block
64/128, ~1/16 of the key blocks): forward+backward against the dense masked reference at T=2k and 8k
(one head at a time), forward on sampled query blocks at 16k and 64k, the decode kernel at 128k
(B=8), the G1 gate kernel, and the block_sparse mixer's Triton path against its torch path.
(b) Times (triton.testing.do_bench medians) ours with and without the selection against cuDNN SDPA
dense causal and FlexAttention (compiled once per shape, warmed up) given the same block mask
(selection excluded for Flex), forward and forward+backward, T=2k..64k (B·T >= 16k tokens); decode at
128k, B=8, against dense SDPA decode; the G1 layer fused vs unfused vs a plain softmax layer at T=2k
and 16k (projections included, fwd+bwd). Each case runs in its own try/except; results are appended to
OUT_DIR/sparse_gpu.json after every case; a table and OUT_DIR/sparse_gpu.png close the run. A time
budget (--budget seconds, default 330) skips whatever is left once spent.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import attnzoo  # noqa: E402
from attnzoo.bench.cases import CaseLog, script_args  # noqa: E402
from attnzoo.ops.gate import sigmoid_output_gate  # noqa: E402
from attnzoo.ops.sparse import (  # noqa: E402
    block_queries,
    block_sparse_attention,
    block_sparse_decode,
    block_sparse_decode_reference,
    pooled_block_keys,
    select_blocks,
    selected_block_mask,
)
from attnzoo.ops.sparse.reference import counted_ids  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
DT = torch.float32 if SMOKE else torch.bfloat16
H, D = (2, 16) if SMOKE else (16, 128)
BLOCKS = (16, 32) if SMOKE else (64, 128)
SINK, LOCAL = 1, 2
TOL = 2e-2
T0 = time.time()
LOG: CaseLog | None = None  # main() makes it


def machine() -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dev = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    import triton

    return {"device": dev, "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None, "commit": commit,
            "dtype": str(DT), "H": H, "D": D, "smoke": SMOKE}


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def bench(fn, grad_to_none=None) -> float:
    """Median ms."""
    if SMOKE:
        fn()
        ts = []
        for _ in range(2):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return 1e3 * sorted(ts)[len(ts) // 2]
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=100, grad_to_none=grad_to_none, return_mode="median")


def inputs(B, T, Hq, Hkv, seed=0):
    g = torch.Generator(device=DEV).manual_seed(seed)
    return [torch.randn(B, T, h, D, device=DEV, generator=g).to(DT) for h in (Hq, Hkv, Hkv)]


def top_k_for(T, bs):
    """top_k giving ~1/16 of the key blocks with the sink and local blocks."""
    return max(1, round(-(-T // bs) / 16) - SINK - LOCAL)


def select(q, k, bs, top_k):
    return select_blocks(block_queries(q, bs), pooled_block_keys(k, None, bs), top_k=top_k, sink_blocks=SINK,
                         local_blocks=LOCAL)


def density(cnt, T, bs):
    n = -(-T // bs)
    m = torch.arange(n, device=cnt.device)
    return {"blocks_per_query_block": cnt.float().mean().item(), "density_all": cnt.float().mean().item() / n,
            "density_causal": (cnt.float() / (m + 1)).mean().item()}


def dense_reference(q, k, v, ids, cnt, bs, rows, do=None):
    """float32 dense masked attention at query positions `rows`, one head at a time; with do (all rows)
    also dq, dk, dv."""
    B, T, Hq, _ = q.shape
    Hkv = k.shape[2]
    G = Hq // Hkv
    sel = selected_block_mask(counted_ids(ids, cnt), -(-T // bs))  # [B, Hkv, M, N]
    j = torch.arange(T, device=q.device)
    o = torch.empty(B, len(rows), Hq, v.shape[-1], device=q.device)
    grads = [torch.zeros(t.shape, device=q.device) for t in (q, k, v)] if do is not None else None
    for h in range(Hq):
        hk = h // G
        allowed = sel[:, hk][:, rows // bs][:, :, j // bs] & (j[None, None] <= rows[None, :, None])
        qh = q[:, rows, h].float().requires_grad_(do is not None)
        kh, vh = (t[:, :, hk].float().requires_grad_(do is not None) for t in (k, v))
        s = torch.einsum("bid,bjd->bij", qh, kh) * D**-0.5
        oh = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ vh
        if do is not None:
            gq, gk, gv = torch.autograd.grad((oh * do[:, :, h].float()).sum(), (qh, kh, vh))
            grads[0][:, :, h] = gq
            grads[1][:, :, hk] += gk
            grads[2][:, :, hk] += gv
        o[:, :, h] = oh.detach()
    return o, grads


def check_prefill(T, bs, Hkv, with_grads):
    q, k, v = inputs(1, T, H, Hkv, seed=T + bs)
    ids, cnt = select(q, k, bs, top_k_for(T, bs))
    res = density(cnt, T, bs)
    if with_grads:
        ins = [t.clone().requires_grad_(True) for t in (q, k, v)]
        o = block_sparse_attention(*ins, ids, cnt, block_size=bs, impl="triton")
        do = torch.randn_like(o)
        o.backward(do)
        o_ref, g_ref = dense_reference(q, k, v, ids, cnt, bs, torch.arange(T, device=DEV), do)
        res.update(o=rel(o, o_ref), **{n: rel(t.grad, g) for n, t, g in zip(("dq", "dk", "dv"), ins, g_ref)})
    else:
        o = block_sparse_attention(q, k, v, ids, cnt, block_size=bs, impl="triton")
        M = -(-T // bs)
        blocks = sorted({0, M // 2, M - 1})
        rows = torch.cat([torch.arange(m * bs, min(T, (m + 1) * bs), device=DEV) for m in blocks])
        res.update(o_sampled=rel(o[:, rows], dense_reference(q, k, v, ids, cnt, bs, rows)[0]), sampled_blocks=blocks)
    res["ok"] = all(v < TOL for n, v in res.items() if n in ("o", "dq", "dk", "dv", "o_sampled"))
    return res


def decode_inputs(B, L, Hkv, bs, top_k):
    g = torch.Generator(device=DEV).manual_seed(L)
    k, v = (torch.randn(B, L, Hkv, D, device=DEV, generator=g).to(DT) for _ in range(2))
    q = torch.randn(B, H, D, device=DEV, generator=g).to(DT)
    lens = torch.full((B,), L, device=DEV, dtype=torch.int32)
    lens[0] = L - bs // 2  # one row ends inside a block
    kbar = pooled_block_keys(k, torch.arange(L, device=DEV)[None] < lens[:, None], bs)  # the cached pooled keys
    qb = ((lens - 1) // bs)[:, None].long()

    def sel():
        ids, cnt = select_blocks(q[:, None], kbar, top_k=top_k, sink_blocks=SINK, local_blocks=LOCAL, q_block=qb)
        return ids[:, :, 0], cnt[:, :, 0]

    return q, k, v, lens, sel


def check_decode(B, L, bs):
    q, k, v, lens, sel = decode_inputs(B, L, H, bs, top_k_for(L, bs))
    ids, cnt = sel()
    o = block_sparse_decode(q, k, v, ids, cnt, lens, block_size=bs, impl="triton")
    err = rel(o, block_sparse_decode_reference(q, k, v, ids, cnt, lens, block_size=bs))
    return {"o": err, "blocks": cnt.float().mean().item(), "ok": err < TOL}


def check_gate(B, T, width):
    g = torch.Generator(device=DEV).manual_seed(width)
    o = torch.randn(B, T, H, D, device=DEV, generator=g).to(DT).requires_grad_(True)
    qx = torch.randn(B, T, H, D + width, device=DEV, generator=g).to(DT).requires_grad_(True)
    dy = torch.randn(B, T, H, D, device=DEV, generator=g).to(DT)
    out = []
    for impl in ("triton", "reference"):
        y = sigmoid_output_gate(o, qx[..., D:], impl=impl)
        out.append((y, *torch.autograd.grad(y, (o, qx), dy)))
    errs = {n: rel(a, b) for n, a, b in zip(("y", "do", "dgate"), out[0], out[1])}
    return {**errs, "ok": all(e < TOL for e in errs.values())}


def check_mixer(T, bs):
    torch.manual_seed(0)
    kw = {"n_heads": H, "block_size": bs, "top_k": top_k_for(T, bs), "n_sink": bs, "window": bs}
    d_model = H * D
    a = attnzoo.build("block_sparse", d_model=d_model, impl="triton", **kw).to(DEV, DT)
    b = attnzoo.build("block_sparse", d_model=d_model, impl="torch", **kw).to(DEV, torch.float32)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, T, d_model, device=DEV).to(DT)
    with torch.no_grad():
        y = a(x)
        y_ref = b(x.float())
        y1, s = a(x[:, :-1], return_state=True)
        y2, _ = a(x[:, -1:], state=s, return_state=True)  # the decode kernel
    return {"prefill": rel(y, y_ref), "decode_step": rel(y2, y_ref[:, -1:]),
            "ok": rel(y, y_ref) < TOL and rel(y2, y_ref[:, -1:]) < TOL}


def sdpa_backend(name):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if SMOKE:
        import contextlib

        return contextlib.nullcontext()
    return sdpa_kernel([getattr(SDPBackend, name)])


_FLEX = {}
FLEX_SMALL_TILES = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_M1": 32, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 32}


def selection_mod(b, h, qi, ki):
    """Flex mask_mod: causal and inside the selection (_FLEX["sel"] [B, H, M, N], _FLEX["bs"]). Compiled Flex
    applies it only in the partial (own) blocks and skips unlisted ones; eager Flex (CPU) applies it
    everywhere and ignores the block lists, so the selection must be in it. A module-level function
    reading a global: a new closure per case would make Flex recompile."""
    bs = _FLEX["bs"]
    return (qi >= ki) & _FLEX["sel"][b, h, qi // bs, ki // bs]


def flex_fn():
    from torch.nn.attention.flex_attention import flex_attention

    if "fn" not in _FLEX:
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        _FLEX["fn"] = flex_attention if SMOKE else torch.compile(flex_attention)
    return _FLEX["fn"]


def flex_mask(ids, cnt, T, bs):
    """Flex's BlockMask of our selection: the own (last) block partial with a causal mask_mod, the rest full.
    Index rows list the blocks in use first, then every other block (a permutation, as create_block_mask
    builds them)."""
    from torch.nn.attention.flex_attention import BlockMask

    B, Hh, M, _ = ids.shape
    n = torch.arange(M, device=ids.device)
    sel = selected_block_mask(counted_ids(ids, cnt), M)  # [B, Hh, M, M]
    own = n[:, None] == n[None, :]
    full = sel & ~own

    def order(used):  # used blocks first (ascending), then the rest
        return torch.argsort((~used).long() * M + n, dim=-1).to(torch.int32)

    _FLEX["sel"], _FLEX["bs"] = sel, bs
    return BlockMask.from_kv_blocks(torch.ones(B, Hh, M, dtype=torch.int32, device=ids.device),
                                    order(own.expand(B, Hh, M, M)), full.sum(-1).to(torch.int32), order(full),
                                    BLOCK_SIZE=bs, mask_mod=selection_mod, seq_lengths=(T, T))


def time_prefill(T, bs, with_flex=True):
    B = max(1, (256 if SMOKE else 16384) // T)
    q, k, v = inputs(B, T, H, H, seed=1)
    tk = top_k_for(T, bs)
    ids, cnt = select(q, k, bs, tk)
    res = {"B": B, "top_k": tk, **density(cnt, T, bs)}
    qs, ks, vs = (t.clone().requires_grad_(True) for t in (q, k, v))
    do = torch.randn_like(q)
    g = [qs, ks, vs]

    def ours(sel, grad):
        def f():
            i, c = select(q, k, bs, tk) if sel else (ids, cnt)  # the selection is not differentiated
            o = block_sparse_attention(qs if grad else q, ks if grad else k, vs if grad else v, i, c, block_size=bs,
                                       impl="triton")
            if grad:
                o.backward(do)
        return f

    res["ours_fwd_ms"] = bench(ours(True, False))
    res["ours_fwd_kernel_ms"] = bench(ours(False, False))
    res["ours_fwdbwd_ms"] = bench(ours(True, True), g)
    qh, kh, vh = (t.transpose(1, 2).contiguous().requires_grad_(True) for t in (q, k, v))
    doh = do.transpose(1, 2).contiguous()
    gh = [qh, kh, vh]
    for label, run in (("cudnn", lambda: F.scaled_dot_product_attention(qh, kh, vh, is_causal=True)),):
        try:
            with sdpa_backend("CUDNN_ATTENTION"):
                with torch.no_grad():
                    res[f"{label}_fwd_ms"] = bench(run)
                res[f"{label}_fwdbwd_ms"] = bench(lambda: run().backward(doh), gh)
        except Exception as e:
            res[f"{label}_error"] = f"{type(e).__name__}: {e}"[:300]
    if with_flex:
        try:
            bm = flex_mask(ids, cnt, T, bs)
        except Exception as e:
            res["flex_error"] = f"{type(e).__name__}: {e}"[:300]
            with_flex = False
    if with_flex:  # Flex's default tiles (BLOCK_M 128) do not divide a 64 block mask: smaller tiles first there
        fx = flex_fn()
        qd, kd, vd = (t.detach() for t in gh)
        tries = (FLEX_SMALL_TILES, None) if bs < 128 else (None, FLEX_SMALL_TILES)
        for kind, run, grads in (("fwd", lambda o: fx(qd, kd, vd, block_mask=bm, kernel_options=o), None),
                                 ("fwdbwd", lambda o: fx(qh, kh, vh, block_mask=bm, kernel_options=o).backward(doh),
                                  gh)):
            for opts in tries:
                try:
                    if kind == "fwd":
                        res["flex_vs_ours_o"] = rel(run(opts).transpose(1, 2), block_sparse_attention(
                            q, k, v, ids, cnt, block_size=bs, impl="triton"))
                    res[f"flex_{kind}_ms"] = bench(lambda: run(opts), grads)
                    res[f"flex_{kind}_kernel_options"] = opts
                    break
                except Exception as e:
                    res[f"flex_{kind}_error"] = f"{type(e).__name__}: {e}"[:300]
    for a, b in (("cudnn", "fwd"), ("cudnn", "fwdbwd"), ("flex", "fwd"), ("flex", "fwdbwd")):
        if f"{a}_{b}_ms" in res:
            res[f"{a}_over_ours_{b}"] = res[f"{a}_{b}_ms"] / res[f"ours_{b}_ms"]
    return res


def time_decode(B, L, bs):
    q, k, v, lens, sel = decode_inputs(B, L, H, bs, top_k_for(L, bs))
    ids, cnt = sel()
    res = {"B": B, "L": L, "blocks": cnt.float().mean().item(), "density": cnt.float().mean().item() / -(-L // bs)}
    with torch.no_grad():
        res["ours_ms"] = bench(lambda: block_sparse_decode(q, k, v, *sel(), lens, block_size=bs, impl="triton"))
        res["ours_kernel_ms"] = bench(lambda: block_sparse_decode(q, k, v, ids, cnt, lens, block_size=bs,
                                                                  impl="triton"))
        qh, kh, vh = q[:, :, None], k.transpose(1, 2), v.transpose(1, 2)
        for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
            try:
                with sdpa_backend(name):
                    res[f"dense_{name.lower()}_ms"] = bench(lambda: F.scaled_dot_product_attention(qh, kh, vh))
            except Exception as e:
                res[f"dense_{name.lower()}_error"] = f"{type(e).__name__}: {e}"[:200]
    dense = [v for n, v in res.items() if n.startswith("dense_") and n.endswith("_ms")]
    if dense:
        res["best_dense_ms"] = min(dense)
        res["dense_over_ours"] = min(dense) / res["ours_ms"]
    return res


def time_g1(T):
    B = 1 if SMOKE else max(1, 16384 // T)
    d_model = H * D
    res = {"B": B}
    x = torch.randn(B, T, d_model, device=DEV).to(DT).requires_grad_(True)
    dy = torch.randn_like(x)
    layers = {"softmax": ("softmax", {})}
    for gate in ("headwise", "elementwise"):
        layers[f"{gate}_unfused"] = ("gated_softmax", {"gate": gate, "gate_impl": "torch"})
        layers[f"{gate}_fused"] = ("gated_softmax", {"gate": gate, "gate_impl": "triton"})
    for label, (name, kw) in layers.items():
        torch.manual_seed(0)
        m = attnzoo.build(name, d_model=d_model, n_heads=H, **kw).to(DEV, DT)
        res[f"{label}_fwdbwd_ms"] = bench(lambda: m(x).backward(dy), [x, *m.parameters()])
    for label in layers:
        if label != "softmax":
            res[f"{label}_over_softmax"] = res[f"{label}_fwdbwd_ms"] / res["softmax_fwdbwd_ms"]
    return res


def report(out):
    rows = [r for r in LOG.records if r["case"].startswith("time prefill") and "ours_fwd_ms" in r]
    print("\nprefill (ms, median)   T   bs  dens | cudnn  flex  ours(sel) ours(kern) | fwd+bwd: cudnn  flex  ours")
    for r in rows:
        f = lambda k: f"{r[k]:7.3f}" if k in r else "    -  "  # noqa: E731
        print(f"{r['case'][13:]:>22s} {r['density_all']:.3f} | {f('cudnn_fwd_ms')} {f('flex_fwd_ms')} "
              f"{f('ours_fwd_ms')} {f('ours_fwd_kernel_ms')} | {f('cudnn_fwdbwd_ms')} {f('flex_fwdbwd_ms')} "
              f"{f('ours_fwdbwd_ms')}")
    for r in LOG.records:
        if r["case"].startswith(("time decode", "time g1")):
            print(r["case"], {k: round(v, 3) for k, v in r.items() if isinstance(v, float)})
    bad = [r["case"] for r in LOG.records if r.get("ok") is False or any(k.endswith("error") for k in r)]
    print("FAILED CHECKS / CASES WITH ERRORS (see the JSON):", bad or "none")
    print("skipped (time budget):", [r["case"] for r in LOG.records if "skipped" in r] or "none")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, kind in zip(axes, ("fwd", "fwdbwd")):
            for bs in BLOCKS:
                rs = sorted((r for r in rows if r["case"].endswith(f"bs={bs}")), key=lambda r: r["T"])
                for key, style in (("cudnn", "k-"), ("flex", "b--"), ("ours", "r-")):
                    pts = [(r["T"], r[f"{key}_{kind}_ms"]) for r in rs if f"{key}_{kind}_ms" in r]
                    if pts and not (key == "cudnn" and bs != BLOCKS[0]):
                        ax.plot(*zip(*pts), style, marker="o" if bs == BLOCKS[0] else "s",
                                label=f"{key}" + ("" if key == "cudnn" else f" bs={bs}"))
            ax.set(xscale="log", yscale="log", xlabel="T (tokens)", ylabel="ms (median)", title=f"{kind}, ~1/16 blocks")
            ax.legend(fontsize=7)
        fig.suptitle(MACHINE["device"], fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "sparse_gpu.png", dpi=120)
    except Exception as e:
        print("plot failed:", e)


def main():
    a = script_args(__doc__, budget=330.0)
    global LOG
    LOG = CaseLog(a.out / "sparse_gpu.json", {"machine": MACHINE}, budget_s=a.budget, t0=T0)
    print(MACHINE, flush=True)
    s = 8 if SMOKE else 1024  # T unit
    small, big = (BLOCKS[0], BLOCKS[1])
    for T, bs, hkv, grads in ((2 * s, small, H, True), (2 * s, big, H // 4 or 1, True), (8 * s // 4, small, H, True),
                              (8 * s // 4 if SMOKE else 8 * s, big, H, True), (16 * s, small, H, False),
                              (64 * s, small, H, False), (64 * s, big, H // 4 or 1, False)):
        LOG.run(f"check prefill T={T} bs={bs} Hkv={hkv}" + (" fwd+bwd" if grads else " fwd"),
                lambda: check_prefill(T, bs, hkv, grads))
    L = 40 * s // 8 if SMOKE else 128 * s
    for bs in BLOCKS:
        LOG.run(f"check decode B=8 L={L} bs={bs}", lambda: check_decode(2 if SMOKE else 8, L, bs))
    for w in (1, D):
        LOG.run(f"check g1 gate width={w}", lambda: check_gate(2 if SMOKE else 4, 2 * s, w))
    LOG.run(f"check mixer block_sparse T={4 * s}", lambda: check_mixer(4 * s, BLOCKS[0]))
    Tmax = 16 * s if SMOKE else 64 * s
    for bs in BLOCKS:  # the headline first: 64k
        LOG.run(f"time prefill T={Tmax} bs={bs}", lambda: {"T": Tmax, **time_prefill(Tmax, bs)})
    LOG.run(f"time decode B=8 L={L} bs={BLOCKS[0]}", lambda: time_decode(2 if SMOKE else 8, L, BLOCKS[0]))
    for T in (s,) if SMOKE else (2 * s, 16 * s):
        LOG.run(f"time g1 T={T}", lambda: time_g1(T))
    for bs in BLOCKS[::-1]:
        for T in (4 * s,) if SMOKE else (2 * s, 4 * s, 8 * s, 16 * s, 32 * s):
            LOG.run(f"time prefill T={T} bs={bs}", lambda: {"T": T, **time_prefill(T, bs)})
    report(a.out)
    print(f"done in {time.time() - T0:.0f} s; results in {a.out / 'sparse_gpu.json'}")


MACHINE = machine()

if __name__ == "__main__":
    main()
