"""The timings of benchmarks/gpu_delta.py (see there): ours, the torch chunked path and fla, fwd and
fwd+bwd at 16k tokens per call with peak memory; whole layers; launch-option variants; decode."""

from __future__ import annotations

import time

import torch

from attnzoo.bench.timing import tuned

from gpu_delta_setup import (BUDGET, D, DEV, DT, FLA, H, SMOKE, T0, TOKENS, bench_ms, fla_call, inputs, ours,
                             rel, torch_chunked)


def timing(T, gate):
    B = max(1, TOKENS // T)
    ins = inputs(B, T, gate, seed=6)
    do = torch.randn(B, T, H, D, device=DEV, dtype=DT)
    provs = {"ours": ours, "torch": torch_chunked}
    if FLA:
        provs["fla"] = fla_call
    out = {"B": B, "T": T, "gate": gate}
    for name, fn in provs.items():
        try:
            xs = [t.detach().clone().requires_grad_(True) if t is not None else None for t in ins[:5]]
            with torch.no_grad():
                fwd_ms = bench_ms(lambda: fn(*ins[:5], scale=D ** -0.5))
            run = lambda: torch.autograd.grad(fn(*xs, scale=D ** -0.5)[0], [x for x in xs if x is not None], do)  # noqa: E731
            run()
            if not SMOKE:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                base = torch.cuda.memory_allocated()
                run()
                torch.cuda.synchronize()
                out[f"{name}_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / 2**20
            out[f"{name}_fwd_ms"], out[f"{name}_fwdbwd_ms"] = fwd_ms, bench_ms(run)
        except Exception as e:
            out[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def fla_layer(name, d_model):
    if SMOKE:
        return None
    try:
        from fla.layers import DeltaNet, GatedDeltaNet
    except Exception:
        return None
    if name == "gated_deltanet":
        return GatedDeltaNet(hidden_size=d_model, expand_v=1, head_dim=D, num_heads=d_model // D, mode="chunk")
    return DeltaNet(hidden_size=d_model, num_heads=d_model // D, mode="chunk")


def timing_mixer(name):
    """A whole layer fwd+bwd (inputs and weights), bf16, d_model = H·D, B·T = 16k: ours with
    impl="triton" and "torch", and fla's layer of the same widths where importable; the Triton
    layer's output against the torch one (same weights)."""
    import attnzoo

    d_model, T = H * D, (64 if SMOKE else 4096)
    B = max(1, TOKENS // T)
    x = torch.randn(B, T, d_model, device=DEV, dtype=DT, requires_grad=True)
    dy = torch.randn_like(x)
    out = {"B": B, "T": T, "d_model": d_model}
    torch.manual_seed(0)
    m = attnzoo.build(name, d_model=d_model, n_heads=H).to(DEV, DT)
    layers = {"ours": m}
    fl = fla_layer(name, d_model)
    if fl is not None:
        layers["fla"] = fl.to(DEV, DT)
    with torch.no_grad():
        m.impl = "torch"
        y_t = m(x)
        m.impl = "triton"
        out["ours_triton_vs_torch_rel"] = rel(m(x), y_t)
    for impl in ("triton", "torch", "fla"):
        if impl == "fla" and "fla" not in layers:
            continue
        layer = layers["fla" if impl == "fla" else "ours"]
        if impl != "fla":
            layer.impl = impl
        params = [p for p in layer.parameters() if p.requires_grad]
        first = lambda y: y[0] if isinstance(y, tuple) else y  # noqa: E731 (fla layers return a tuple)
        try:
            out[f"{impl}_fwdbwd_ms"] = bench_ms(lambda: torch.autograd.grad(first(layer(x)), [x, *params], dy))
        except Exception as e:
            out[f"{impl}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


TUNES = ({}, {"state_bv": 16, "state_min_programs": 0}, {"state_bv": 32, "state_min_programs": 0},
         {"state_bv": 64, "state_min_programs": 0}, {"state_stages": 3}, {"state_stages": 1}, {"state_warps": 8},
         {"bwd_warps": 4}, {"wy_warps": 8}, {"dqk_bk": 32})


def tuning(T, gate):
    """fwd and fwd+bwd of ours under other launch options (ops/delta/triton/chunk.TUNE), each on top
    of the defaults (the first entry)."""
    from attnzoo.ops.delta.triton import chunk as delta_chunk

    B = max(1, TOKENS // T)
    ins = inputs(B, T, gate, seed=8)
    do = torch.randn(B, T, H, D, device=DEV, dtype=DT)
    xs = [t.detach().clone().requires_grad_(True) if t is not None else None for t in ins[:5]]
    out = {"B": B, "T": T, "gate": gate, "defaults": dict(delta_chunk.TUNE), "variants": []}
    for change in TUNES:
        if time.time() - T0 > BUDGET[0] + 30:  # the case may start just before the budget ends
            out["variants"].append({"change": change, "skipped": "time budget spent"})
            continue
        rec = {"change": change}
        with tuned(delta_chunk.TUNE, **change):
            try:
                with torch.no_grad():
                    rec["fwd_ms"] = bench_ms(lambda: ours(*ins[:5], scale=D ** -0.5))
                rec["fwdbwd_ms"] = bench_ms(lambda: torch.autograd.grad(
                    ours(*xs, scale=D ** -0.5)[0], [x for x in xs if x is not None], do))
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        out["variants"].append(rec)
    return out


def timing_decode():
    B = 4 if SMOKE else 64
    q, k, v, beta, g, h0 = inputs(B, 1, "weak", seed=7)
    out = {"B": B, "T": 1}
    with torch.no_grad():
        out["ours_ms"] = bench_ms(lambda: ours(q, k, v, beta, g, scale=D ** -0.5, initial_state=h0,
                                               output_final_state=True))
        if FLA:
            try:
                out["fla_ms"] = bench_ms(lambda: FLA["recurrent"](q=q, k=k, v=v, g=g, beta=beta, scale=D ** -0.5,
                                                                  initial_state=h0, output_final_state=True))
            except Exception as e:
                out["fla_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out
