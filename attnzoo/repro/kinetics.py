"""kinetics: the Kinetics eFLOPs cost model against measured decode time (Kinetics, arXiv:2506.05333).

One decoder layer (MHA, n_kv_heads = n_heads, so no GQA copy hides in the dense path), a batch of B
sequences whose caches hold L tokens, one decode step timed (attnzoo.bench.decode_step) for
- dense attention over the L cached keys,
- block top-k attention (Kinetics' selection: group-mean logits on pooled block keys, top_k blocks of
  block_size keys and the newest block; pooled keys cached; attnzoo.ops.sparse, Triton decode on CUDA),
- the layer's parameters (q/k/v/o projections and SwiGLU MLP for the B new tokens),
at contexts L in `contexts`. The model side is attnzoo.bench.cost (dense_kv_cost, block_topk_cost, 2P per
token for the parameters) priced in seconds with this machine's measured matmul FLOP/s F and copy
bandwidth W: t_model = C_comp / F + C_mem / W, i.e. eFLOPs / F with E = F / W (Kinetics' E = 562.5 is
its B200 target; ours is measured and reported).

Verdict rules, fixed before any run ("large L" = L >= `large_from`):
1. Dense decode time follows the model: measured / model in [1/2, 2] at every large L -> reproduced;
   in [1/4, 4] -> partly; else not.
2. Block top-k decode time follows the model: the same rule on the block top-k points.
3. The sparse speedup at the largest L: measured (dense / block top-k) within 2x of the model's ratio
   -> reproduced; within 4x -> partly; else not.
4. The crossover where attention costs more than the parameters: the model's L* (Kinetics' form:
   2P FLOPs per token, parameter reads amortised over the batch, so L* = 2P / (4 H d + E 2 H_kv d b))
   against the measured L* (dense attention time = parameter time, log-log interpolation): within 2x
   -> reproduced; 4x -> partly; else not (also the L* with the weight reads charged, P b / B bytes per
   token, is reported beside it).
"""

from __future__ import annotations

import math

from attnzoo.bench.cost import block_topk_cost, dense_kv_cost
from attnzoo.repro.base import VERDICTS, Claim

NAME = "kinetics"
PAPER = "Kinetics: Rethinking Test-Time Scaling Laws (sparse attention cost model), arXiv:2506.05333"
CLAIMS = (
    "dense decode time per token follows the eFLOPs model",
    "block top-k decode time follows the eFLOPs model",
    "block top-k's speedup over dense at the longest context matches the model",
    "the context where attention cost exceeds parameter cost matches the model",
)

SIZES = {
    "quick": dict(d_model=256, n_heads=4, head_dim=64, mlp_hidden=688, batch=2, contexts=(512, 1024, 2048, 4096),
                  block_size=16, top_k=7, dtype="float32", large_from=2048, repeats=5),
    "medium": dict(d_model=1024, n_heads=8, head_dim=128, mlp_hidden=2816, batch=4,
                   contexts=(256, 1024, 4096, 8192, 16384, 32768), block_size=16, top_k=63, dtype="float32",
                   large_from=4096, repeats=7),
    "full": dict(d_model=2048, n_heads=16, head_dim=128, mlp_hidden=5632, batch=16,
                 contexts=tuple(2**i for i in range(8, 18)), block_size=16, top_k=63, dtype="bfloat16",
                 large_from=4096, repeats=20),
}


def band(ratio: float, lo: float = 2.0, hi: float = 4.0) -> str:
    """reproduced when ratio is within lo x of 1, partly within hi x, else not."""
    r = max(ratio, 1 / ratio) if ratio > 0 and math.isfinite(ratio) else math.inf
    return VERDICTS[0] if r <= lo else VERDICTS[1] if r <= hi else VERDICTS[2]


def worst(verdicts: list[str]) -> str:
    return max(verdicts, key=VERDICTS.index)


def crossover(Ls, a, b) -> float:
    """The L where a(L) first exceeds b(L), log-log interpolated between measured points (inf if never;
    the first L if already above there)."""
    pts = list(zip(Ls, a, b))
    if pts[0][1] >= pts[0][2]:
        return float(pts[0][0])
    for (l0, a0, b0), (l1, a1, b1) in zip(pts, pts[1:]):
        if a1 >= b1:
            d0, d1 = math.log(a0 / b0), math.log(a1 / b1)
            t = d0 / (d0 - d1)
            return math.exp(math.log(l0) + t * (math.log(l1) - math.log(l0)))
    return math.inf


def run(ctx):
    from attnzoo.repro._train import cpu_threads

    with cpu_threads(ctx.device):   # on a shared CPU two threads stall each other (32 ms steps)
        return _run(ctx)


def _run(ctx):
    import torch

    from attnzoo.bench.decode_step import (
        DecoderLayerParams,
        block_topk_decode,
        cache_pooled_keys,
        device_rates,
        time_call,
    )
    from attnzoo.ops.softmax import softmax_attention

    p = SIZES[ctx.size]
    dev, dtype = ctx.device, getattr(torch, p["dtype"])
    H, D, B, bs, k = p["n_heads"], p["head_dim"], p["batch"], p["block_size"], p["top_k"]
    b = torch.finfo(dtype).bits // 8
    torch.manual_seed(ctx.seed)
    F_rate, W_rate = device_rates(dev, dtype)
    E = F_rate / W_rate
    ctx.log(f"matmul {F_rate / 1e12:.3g} TFLOP/s, copy {W_rate / 1e9:.3g} GB/s: E = {E:.0f} FLOPs/byte")
    ctx.record(kind="device", flops_per_s=F_rate, bytes_per_s=W_rate, E=E)

    layer = DecoderLayerParams(p["d_model"], n_heads=H, n_kv_heads=H, head_dim=D, mlp_hidden=p["mlp_hidden"])
    layer = layer.to(dev, dtype)
    P = layer.n_params
    x = torch.randn(B, 1, p["d_model"], device=dev, dtype=dtype)
    with torch.no_grad():
        t_param = time_call(lambda: layer(x), device=dev, repeats=p["repeats"])
    m_param = 2 * P * B / F_rate                                   # Kinetics: reads amortised
    m_param_reads = m_param + P * b / W_rate                       # weights read once per step
    ctx.record(kind="params", n_params=P, measured_s=t_param, model_s=m_param, model_with_reads_s=m_param_reads)

    Lmax = max(p["contexts"])
    K = torch.randn(B, Lmax, H, D, device=dev, dtype=dtype)   # the caches, made on the device
    V = torch.randn(B, Lmax, H, D, device=dev, dtype=dtype)
    q = torch.randn(B, H, D, device=dev, dtype=dtype)

    rows = []
    with torch.no_grad():
        for L in p["contexts"]:
            Kl, Vl = K[:, :L], V[:, :L]
            kbar = cache_pooled_keys(Kl, bs)
            t_dense = time_call(lambda: softmax_attention(q[:, None], Kl, Vl), device=dev, repeats=p["repeats"])
            t_sparse = time_call(lambda: block_topk_decode(q, Kl, Vl, kbar, block_size=bs, top_k=k), device=dev,
                                 repeats=p["repeats"])
            cd = dense_kv_cost(L, n_heads=H, head_dim=D, bytes_per_elem=b)
            cs = block_topk_cost(L, n_heads=H, head_dim=D, block_size=bs, top_k=k, local=bs, bytes_per_elem=b)
            row = dict(kind="decode", L=L, dense_s=t_dense, sparse_s=t_sparse,
                       dense_model_s=B * (cd.flops / F_rate + cd.bytes / W_rate),
                       sparse_model_s=B * (cs.flops / F_rate + cs.bytes / W_rate),
                       dense_eflops=B * cd.eflops(E), sparse_eflops=B * cs.eflops(E))
            ctx.record(**row)
            rows.append(row)
            ctx.log(f"L={L:6d}: dense {t_dense * 1e6:8.1f} us (model {row['dense_model_s'] * 1e6:8.1f}), "
                    f"block top-k {t_sparse * 1e6:8.1f} us (model {row['sparse_model_s'] * 1e6:8.1f})")
    del K, V
    _plot(ctx, p, rows, t_param, m_param, m_param_reads)
    per_L = 4 * H * D / F_rate + 2 * H * D * b / W_rate           # model attention seconds per token per L
    return claims(p, rows, dict(P=P, b=b, E=E, t_param=t_param, L_model=2 * P / F_rate / per_L,
                                L_model_reads=(2 * P / F_rate + P * b / (B * W_rate)) / per_L), ctx.size)


def claims(p, rows, m, size):
    large = [r for r in rows if r["L"] >= p["large_from"]]
    cond = (f"{size}: d_model {p['d_model']}, {p['n_heads']} heads x {p['head_dim']} (MHA), batch {p['batch']}, "
            f"{p['dtype']}, blocks of {p['block_size']}, top_k {p['top_k']} "
            f"+ the newest block (budget {p['block_size'] * (p['top_k'] + 1)}), E = {m['E']:.0f} measured")

    def fit_row(key, claim, what):
        ratios = [r[f"{key}_s"] / r[f"{key}_model_s"] for r in large]
        ours = f"measured/model {min(ratios):.2f}-{max(ratios):.2f} at L {large[0]['L']}-{large[-1]['L']}"
        return Claim(claim, f"{what} cost = eFLOPs (C_comp + E C_mem)", ours, worst([band(x) for x in ratios]),
                     cond + "; rule: within 2x at every large L (4x: partly)")

    c1 = fit_row("dense", CLAIMS[0], "dense")
    c2 = fit_row("sparse", CLAIMS[1], "block top-k")
    last = rows[-1]
    meas, model = last["dense_s"] / last["sparse_s"], last["dense_model_s"] / last["sparse_model_s"]
    c3 = Claim(CLAIMS[2], f"model: {model:.1f}x at L={last['L']}", f"measured {meas:.1f}x", band(meas / model),
               cond + "; rule: within 2x of the model's ratio (4x: partly)")
    L_meas = crossover([r["L"] for r in rows], [r["dense_s"] for r in rows], [m["t_param"]] * len(rows))
    c4 = Claim(CLAIMS[3], f"model L* = {m['L_model']:.0f} (reads amortised)",
               f"measured L* = {L_meas:.0f}; model with weight reads {m['L_model_reads']:.0f}",
               band(L_meas / m["L_model"]), cond + f"; P = {m['P'] / 1e6:.1f}M per layer; rule: within 2x (4x: partly)")
    return [c1, c2, c3, c4]


def _plot(ctx, p, rows, t_param, m_param, m_param_reads):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ls = [r["L"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, c in (("dense", "dense", "C0"), ("sparse", "block top-k", "C1")):
        ax.plot(Ls, [r[f"{key}_s"] * 1e6 for r in rows], "o-", color=c, label=f"{label}, measured")
        ax.plot(Ls, [r[f"{key}_model_s"] * 1e6 for r in rows], "--", color=c, label=f"{label}, model")
    ax.axhline(t_param * 1e6, color="k", label="parameters, measured")
    ax.axhline(m_param * 1e6, color="k", linestyle="--", label="parameters, model (reads amortised)")
    ax.axhline(m_param_reads * 1e6, color="grey", linestyle=":", label="parameters, model + weight reads")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length L")
    ax.set_ylabel(f"one decode step of {p['batch']} sequences (us)")
    ax.set_title(f"kinetics ({ctx.size}): one layer, d_model {p['d_model']}, {p['dtype']}")
    ax.legend(fontsize=7)
    ctx.savefig(fig)
