"""Achieved rates of `attnzoo bench speed` against the machine's measured ceilings (issue #22: "report achieved
bandwidth / FLOP rate against the measured ceilings"): speed_rates.md beside speed.md.

Ceilings, measured once per run on the GPU: the copy bandwidth of a 1 GiB device-to-device copy (read +
write) and the bf16 matmul rate of an 8192^3 product (do_bench medians). Per timed case: TFLOP/s from the
record's model FLOPs (the GLA / delta / SDPA counts of speed.py and speed_delta.py) and GB/s from a lower bound
of its memory traffic, each tensor the op must read or write once:

    fwd:     q, k, v (+ beta, g) in, o out;       fwd+bwd: those, do in, dq, dk, dv (+ dbeta, dg) out;
    decode:  one token's q, k, v (+ beta, g) in, o out, and the state [B, H, D, D] float32 read and written

(16-bit activations, float32 gates; SDPA's K / V cache at decode: B·H·T·D each). A rate far below both
ceilings says the op is bound by neither: launches, synchronisation or latency (the scalar GLA's 0.9 ms
for 16k tokens).
"""

from __future__ import annotations

from attnzoo.bench.speed_delta import DELTA, GATED_DELTA

GLA = ("attnzoo_scalar", "attnzoo_vector", "fla_simple_gla", "fla_gla")
GATED = (*GLA, *GATED_DELTA)                                     # the providers timed in each gate regime
VECTOR = ("attnzoo_vector", "fla_gla")


def measure_ceilings() -> dict:
    """{"copy_TBps", "bf16_matmul_TFLOPs"} of the current CUDA device."""
    import torch

    from attnzoo.bench.timing import do_bench_ms

    x = torch.empty(2 ** 30, dtype=torch.uint8, device="cuda").random_(0, 255)
    y = torch.empty_like(x)
    ms = do_bench_ms(lambda: y.copy_(x))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    ms2 = do_bench_ms(lambda: a @ b)
    return {"copy_TBps": 2 * x.numel() / ms / 1e9, "bf16_matmul_TFLOPs": 2 * 8192 ** 3 / ms2 / 1e9}


def io_bytes(rec: dict) -> float | None:
    """The lower bound of a case's memory traffic (module docstring), None for a whole mixer."""
    p, mode = rec["provider"], rec["mode"]
    if p.startswith("mixer:"):
        return None
    B, T, H, D = rec["B"], rec["T"], rec["H"], rec["D"]
    n = 1 if mode == "decode" else T
    act = B * n * H * D * 2                                            # one [B, n, H, D] 16-bit tensor
    gate = 0 if p not in GATED else B * n * H * (D if p in VECTOR else 1) * 4
    beta = B * n * H * 2 if p in DELTA else 0
    if p.startswith("sdpa_"):
        if mode == "decode":
            return 2 * act + 2 * B * H * T * D * 2                     # q, o and the K / V cache
        return (4 if mode == "fwd" else 8) * act                       # q, k, v, o (+ do, dq, dk, dv)
    if mode == "decode":
        return 4 * act + gate + beta + 2 * B * H * D * D * 4
    fwd = 4 * act + gate + beta
    return fwd if mode == "fwd" else fwd + 4 * act + gate + beta


def rates_markdown(records: list[dict], ceilings: dict | None) -> str:
    """A row per timed case: ms, TFLOP/s and GB/s, each also as a share of its ceiling when measured."""
    mm = (ceilings or {}).get("bf16_matmul_TFLOPs")
    bw = (ceilings or {}).get("copy_TBps")
    head = ["# Achieved rates", ""]
    if ceilings:
        head += [f"Ceilings measured in this run: copy {bw:.2f} TB/s, bf16 matmul {mm:.0f} TFLOP/s.", ""]
    lines = head + ["| provider | mode | T | B | gates | ms | TFLOP/s | % of matmul | GB/s (IO bound) | % of copy |",
                    "|---|---|---|---|---|---|---|---|---|---|"]
    pct = lambda v, c: f"{100 * v / c:.1f}" if v is not None and c else "-"  # noqa: E731
    for r in sorted((r for r in records if "ms" in r),
                    key=lambda r: (r["mode"], r["T"], r["B"], r.get("gates") or "", r["provider"])):
        tf = r.get("tflops")
        b = io_bytes(r)
        gbs = b / r["ms"] / 1e6 if b is not None else None
        lines.append(f"| {r['provider']} | {r['mode']} | {r['T']} | {r['B']} | {r.get('gates') or '-'} | "
                     f"{r['ms']:.3f} | {'-' if tf is None else f'{tf:.1f}'} | {pct(tf, mm)} | "
                     f"{'-' if gbs is None else f'{gbs:.0f}'} | {pct(gbs, bw * 1e3 if bw else None)} |")
    return "\n".join(lines) + "\n"
