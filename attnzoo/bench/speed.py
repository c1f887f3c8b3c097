"""`attnzoo bench speed`: time and memory of the linear-attention ops against SDPA and fla.

Providers (one name each in the results):
  attnzoo_scalar  gated_linear_attention, scalar gate g [B, T, H]      (impl="triton")
  attnzoo_vector  gated_linear_attention, vector gate g [B, T, H, K]   (impl="triton")
  sdpa_flash / sdpa_cudnn / sdpa_efficient   F.scaled_dot_product_attention(is_causal=True) under
                  torch.nn.attention.sdpa_kernel with that one backend (skipped if it refuses)
  fla_simple_gla / fla_gla   fla.ops chunk_simple_gla / chunk_gla, when fla is importable
                  (fla's Hopper guard on the gated backward, Triton < 3.7.1, is lifted for
                  chunk_simple_gla: its timing only, its gradients are not trusted there)
  mixer:NAME      a whole registered mixer (projections, gates, norms and its op) at
                  d_model = H·D with n_heads = H, bf16 weights; e.g. mixer:gla, mixer:softmax
Modes: fwd, fwdbwd, decode (one new token against a context of T: our recurrent kernel with a
state; SDPA with a KV cache of length T). Gate regimes (--gates, fwd and fwdbwd of the GLA ops, ours
and fla's): "weak", g = logsigmoid(x) / 16 (GLA's own gate: chunk totals about −3..−10), and "strong",
g = logsigmoid(x) (−0.81 per token: RWKV-6 / HGRN-2-like forgetting), x ~ N(0, 1); each record says
which ("gates"), the table has a row per regime, the gate-less providers (SDPA, mixers) in each.
Times are triton.testing.do_bench medians after warm-up, on random inputs, taken in --rounds
interleaved rounds per case (the providers in rotated order; the median of the rounds is reported,
every round kept in ms_rounds).
FLOPs: SDPA causal fwd 2·B·H·T²·D (half of 4·B·H·T²·D), fwd+bwd 3.5 x fwd;
chunked GLA fwd B·H·T·(4·K·V + 2·C·(K + V)) with C = 64, fwd+bwd 3.5 x fwd (a model, stated so).
Results: JSON lines (first a machine line), a Markdown table with ratios per shape, a PNG plot.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass

import torch

from attnzoo.bench.speed_delta import DELTA, delta_call, fla_delta_ops
from attnzoo.bench.speed_rates import GATED, VECTOR, measure_ceilings, rates_markdown
from attnzoo.bench.timing import do_bench_ms

DEFAULT_T = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
PROVIDERS = ("attnzoo_scalar", "attnzoo_vector", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient",
             "fla_simple_gla", "fla_gla", *DELTA)
MODES = ("fwd", "fwdbwd", "decode")
GATES = {"weak": 16.0, "strong": 1.0}   # regime: g = logsigmoid(randn) / divisor


@dataclass
class Shape:
    B: int
    T: int
    H: int = 16
    D: int = 128


def default_shapes(tokens=16384, H=16, D=128, Ts=DEFAULT_T):
    return [Shape(B=max(1, tokens // T), T=T, H=H, D=D) for T in Ts]


def parse_shapes(text: str, H=16, D=128, tokens=16384):
    """'1024,8192x2' -> T=1024 with B = tokens // T, T=8192 with B=2."""
    shapes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        T, _, B = item.partition("x")
        if not T.isdigit() or (B and not B.isdigit()):
            raise ValueError(f"--shapes items must be T or TxB (integers), got {item!r}")
        T = int(T)
        shapes.append(Shape(B=int(B) if B else max(1, tokens // T), T=T, H=H, D=D))
    return shapes


def machine_line():
    import triton

    p = torch.cuda.get_device_properties(0)
    try:
        import subprocess
        drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:
        drv = "unknown"
    return {"machine": {"gpu": p.name, "sms": p.multi_processor_count, "driver": drv, "torch": torch.__version__,
                        "triton": triton.__version__, "cuda": torch.version.cuda,
                        "cudnn": torch.backends.cudnn.version()}}


def gla_flops(s: Shape, mode):
    f = s.B * s.H * s.T * (4 * s.D * s.D + 2 * 64 * 2 * s.D)
    return {"fwd": f, "fwdbwd": 3.5 * f}.get(mode)


def sdpa_flops(s: Shape, mode):
    f = 2 * s.B * s.H * s.T * s.T * s.D
    return {"fwd": f, "fwdbwd": 3.5 * f, "decode": 4 * s.B * s.H * s.T * s.D}.get(mode)


def fla_module():
    """fla's ops by provider (decode ops under "<provider>:decode"), or None when fla is missing."""
    try:
        import fla.ops.common.chunk_o as chunk_o
        from fla.ops.gla import chunk_gla, fused_recurrent_gla
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
    except Exception:
        return None
    chunk_o.TRITON_ABOVE_3_7_1 = True  # lift the Hopper guard: speed only
    return {"fla_simple_gla": chunk_simple_gla, "fla_gla": chunk_gla, "fla_simple_gla:decode":
            fused_recurrent_simple_gla, "fla_gla:decode": fused_recurrent_gla, **fla_delta_ops()}


def make_mixer_call(name, s: Shape, mode, dtype=torch.bfloat16, device="cuda"):
    """A whole mixer: fwd, fwd+bwd (inputs and weights), or decode (one token after a context of T,
    the state from one prefill). Returns (fn, None) or None for a non-causal mixer's decode."""
    import inspect

    from attnzoo.registry import build, get_class

    kw = {"n_heads": s.H} if "n_heads" in inspect.signature(get_class(name).__init__).parameters else {}
    m = build(name, d_model=s.H * s.D, **kw).to(device, dtype)
    if mode == "decode":
        if not m.causal:
            return None
        with torch.no_grad():
            _, state = m(torch.randn(s.B, s.T, m.d_model, device=device, dtype=dtype), return_state=True)
            x = torch.randn(s.B, 1, m.d_model, device=device, dtype=dtype)
        return (lambda: m(x, state=state, return_state=True)), None
    x = torch.randn(s.B, s.T, m.d_model, device=device, dtype=dtype, requires_grad=mode == "fwdbwd")
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                m(x)
        return fn, None
    dy = torch.randn_like(x)
    params = [p for p in m.parameters() if p.requires_grad]
    return (lambda: torch.autograd.grad(m(x), [x, *params], dy)), None


def make_call(provider, s: Shape, mode, dtype=torch.bfloat16, fla=None, gates="weak"):
    """Returns (fn, flops) or None when the provider cannot run this case. gates: a GATES regime
    (the GLA ops' fwd and fwdbwd)."""
    import torch.nn.functional as F

    if provider.startswith("mixer:"):
        return make_mixer_call(provider.split(":", 1)[1], s, mode, dtype)
    dev = "cuda"
    B, T, H, D = s.B, s.T, s.H, s.D
    if provider in DELTA:
        return delta_call(provider, B, T, H, D, mode, dtype=dtype, fla=fla, divisor=GATES[gates])
    rg = mode == "fwdbwd"
    rnd = lambda *shape: torch.randn(*shape, device=dev, dtype=dtype).requires_grad_(rg)  # noqa: E731
    if provider.startswith("sdpa_"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = {"sdpa_flash": SDPBackend.FLASH_ATTENTION, "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
                   "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION}[provider]
        if mode == "decode":
            q, k, v = rnd(B, H, 1, D), rnd(B, H, T, D), rnd(B, H, T, D)
            causal = False
        else:
            q, k, v = rnd(B, H, T, D), rnd(B, H, T, D), rnd(B, H, T, D)
            causal = True
        do = torch.randn_like(q)

        def fn():
            with sdpa_kernel(backend):
                o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            if rg:
                torch.autograd.grad(o, (q, k, v), do)
        return fn, sdpa_flops(s, mode)
    vector = provider in VECTOR
    if mode == "decode":
        from attnzoo.ops.linear import gated_linear_attention

        q, k, v = rnd(B, 1, H, D), rnd(B, 1, H, D), rnd(B, 1, H, D)
        g = -torch.rand(B, 1, H, *((D,) if vector else ()), device=dev) * 0.1
        S = torch.randn(B, H, D, D, device=dev)
        if provider.startswith("attnzoo"):
            return (lambda: gated_linear_attention(q, k, v, g, initial_state=S, output_final_state=True,
                                                   impl="triton")), 4 * B * H * D * D
        if fla is None or provider + ":decode" not in fla:
            return None
        f, gk = fla[provider + ":decode"], ({"gk": g} if vector else {"g": g})
        return (lambda: f(q, k, v, **gk, scale=D ** -0.5, initial_state=S, output_final_state=True)), 4 * B * H * D * D
    q, k, v = rnd(B, T, H, D), rnd(B, T, H, D), rnd(B, T, H, D)
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, *((D,) if vector else ()), device=dev)) / GATES[gates]
    g.requires_grad_(rg)
    do = torch.randn_like(v)
    if provider.startswith("attnzoo"):
        from attnzoo.ops.linear import gated_linear_attention
        op = lambda: gated_linear_attention(q, k, v, g, impl="triton")[0]  # noqa: E731
    else:
        if fla is None:
            return None
        f = fla[provider]
        op = lambda: f(q, k, v, g, scale=D ** -0.5)[0]  # noqa: E731

    def fn():
        o = op()
        if rg:
            torch.autograd.grad(o, (q, k, v, g), do)
    return fn, gla_flops(s, mode)


def regimes(provider, mode, gates) -> tuple:
    """The gate regimes a provider is timed in: each of `gates` for the GLA ops' fwd / fwdbwd, else
    (None,): SDPA and whole mixers have no gate input, decode's cost does not depend on its values."""
    return tuple(gates) if provider in GATED and mode != "decode" else (None,)


def prepare(provider, s, mode, fla=None, gates=None):
    """(record, fn): the first call (its seconds), peak memory above the inputs, and the call to
    time; fn is None when the provider cannot run this case or failed (then record has "error").
    gates: the GATES regime of a GLA op's inputs (None: weak, and not recorded)."""
    rec = {"provider": provider, "mode": mode, **asdict(s), **({"gates": gates} if gates else {})}
    try:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
        call = make_call(provider, s, mode, fla=fla, gates=gates or "weak")
        if call is None:
            return None, None
        fn, flops = call
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        rec["first_call_s"] = time.perf_counter() - t0
        torch.cuda.reset_peak_memory_stats()
        inputs = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        rec["peak_mb"] = (torch.cuda.max_memory_allocated() - inputs) / 2**20
        rec["inputs_mb"] = (inputs - base) / 2**20
        rec["flops"] = flops
        return rec, fn
    except Exception as e:  # a backend that refuses this shape is recorded, not fatal
        rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        return rec, None


def timed_rounds(entries, rounds: int, timer=do_bench_ms):
    """Times every (record, fn) of one shape and mode `rounds` times, the providers interleaved
    and their order rotated each round (so a drift of clocks or host load is shared, not pinned on
    whoever ran last); record["ms"] = median of the rounds' medians, record["ms_rounds"] all of them."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    live = [e for e in entries if e[1] is not None]
    for r in range(rounds if live else 0):
        for rec, fn in live[r % len(live):] + live[:r % len(live)]:
            if "error" in rec:
                continue
            try:
                rec.setdefault("ms_rounds", []).append(timer(fn))
            except Exception as e:  # e.g. out of memory at the largest shapes
                rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
    for rec, _ in live:
        if "error" in rec:
            rec.pop("ms_rounds", None)
            continue
        ms = sorted(rec["ms_rounds"])
        rec["ms"] = ms[len(ms) // 2] if len(ms) % 2 else 0.5 * (ms[len(ms) // 2 - 1] + ms[len(ms) // 2])
        flops = rec.pop("flops", None)
        rec["tflops"] = flops / rec["ms"] / 1e9 if flops else None
        rec["tokens_per_s"] = (rec["B"] if rec["mode"] == "decode" else rec["B"] * rec["T"]) / rec["ms"] * 1e3
    return [rec for rec, _ in entries]


def measure(provider, s, mode, fla=None, rounds=1):
    """One provider and case: prepare, then timed_rounds (None when the provider cannot run it)."""
    rec, fn = prepare(provider, s, mode, fla=fla)
    if rec is None:
        return None
    return timed_rounds([(rec, fn)], rounds)[0]


def _mixer_providers(records):
    return tuple(sorted({r["provider"] for r in records if r.get("provider", "").startswith("mixer:")}))


def markdown(records):
    """One row per (mode, T, B) and, when records carry them, gate regime: a record without "gates"
    (SDPA, mixers, decode; or a run before regimes existed) is shown in every regime's row of its case."""
    timed = [r for r in records if "ms" in r]
    regs = {}
    for r in timed:
        if r.get("gates"):
            regs.setdefault((r["mode"], r["T"], r["B"]), set()).add(r["gates"])
    rows = {}
    for r in timed:
        case = (r["mode"], r["T"], r["B"])
        for g in [r["gates"]] if r.get("gates") else sorted(regs.get(case, {""})):
            rows.setdefault((*case, g), {})[r["provider"]] = r
    with_gates = any(regs.values())
    provs = [p for p in PROVIDERS + _mixer_providers(records) if any(p in v for v in rows.values())]
    delta = any(p in DELTA for p in provs)
    head = ("| mode | T | B | " + ("gates | " if with_gates else "") + " | ".join(f"{p} ms" for p in provs)
            + " | scalar/fla | vector/fla | scalar/best SDPA | vector/best SDPA |"
            + (" gated delta/fla | delta/fla |" if delta else ""))
    lines = [head, "|" + "---|" * (3 + with_gates + len(provs) + 4 + 2 * delta)]
    for (mode, T, B, gates), v in sorted(rows.items()):
        sd = [v[p]["ms"] for p in v if p.startswith("sdpa_")]
        best = min(sd) if sd else None
        ratio = lambda a, b: f"{v[a]['ms'] / b:.2f}" if a in v and b else "-"  # noqa: E731
        fs = v["fla_simple_gla"]["ms"] if "fla_simple_gla" in v else None
        fv = v["fla_gla"]["ms"] if "fla_gla" in v else None
        cells = [f"{v[p]['ms']:.3f}" if p in v else "-" for p in provs]
        ratios = [ratio("attnzoo_scalar", fs), ratio("attnzoo_vector", fv), ratio("attnzoo_scalar", best),
                  ratio("attnzoo_vector", best)]
        if delta:
            ratios += [ratio(f"attnzoo_{n}", v[f"fla_{n}"]["ms"] if f"fla_{n}" in v else None)
                       for n in ("gated_delta", "delta")]
        lines.append(f"| {mode} | {T} | {B} | " + (f"{gates or '-'} | " if with_gates else "")
                     + " | ".join(cells + ratios) + " |")
    return "\n".join(lines) + "\n\nRatios are time(ours) / time(baseline): below 1 means ours is faster.\n"


def plot(records, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["mode"] for r in records if "ms" in r})
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for p in PROVIDERS + _mixer_providers(records):
            pts = sorted((r["T"], r["ms"]) for r in records
                         if r.get("provider") == p and r["mode"] == mode and "ms" in r)
            if pts:
                ax.plot(*zip(*pts), marker="o", label=p)
        ax.set(xscale="log", yscale="log", xlabel="T (B·T fixed where B >= 1)", ylabel="ms", title=mode)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _is_mixer(provider) -> bool:
    if not provider.startswith("mixer:"):
        return False
    from attnzoo.registry import list_mixers

    return provider.split(":", 1)[1] in list_mixers()


def run_speed(shapes, out_dir, providers=PROVIDERS, modes=("fwd", "fwdbwd"), progress=print, rounds=3,
              gates=("weak",)):
    """Every (mode, shape): each provider prepared once per gate regime it takes (regimes), then
    timed in `rounds` interleaved rounds (timed_rounds). Appends JSON lines to out_dir/speed.jsonl
    as each case finishes. gates: GATES regimes; ("weak",) alone records no "gates" key (as before)."""
    if not gates or any(g not in GATES for g in gates):
        raise ValueError(f"gates must be a non-empty list of {sorted(GATES)}, got {gates!r}")
    if not torch.cuda.is_available():
        raise ValueError("bench speed needs a CUDA GPU (torch.cuda.is_available() is False)")
    bad = [p for p in providers if p not in PROVIDERS and not _is_mixer(p)] + [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown providers/modes {bad}; providers: {PROVIDERS}, modes: {MODES}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    tagged = tuple(gates) != ("weak",)
    os.makedirs(out_dir, exist_ok=True)
    jl = os.path.join(out_dir, "speed.jsonl")
    fla = fla_module() if any(p.startswith("fla_") for p in providers) else None
    records = []
    ceilings = measure_ceilings()
    with open(jl, "a") as f:
        f.write(json.dumps({**machine_line(), "rounds": rounds, "ceilings": ceilings}) + "\n")
        for mode in modes:
            for s in shapes:
                entries = [e for p in providers if not (p.startswith("fla_") and fla is None)
                           for g in regimes(p, mode, gates)
                           for e in [prepare(p, s, mode, fla=fla, gates=g if tagged else None)] if e[0] is not None]
                for rec in timed_rounds(entries, rounds):
                    records.append(rec)
                    f.write(json.dumps(rec) + "\n")
                    progress(f"{mode:7s} T={s.T:6d} B={s.B:3d} {rec['provider']:16s} {rec.get('gates') or '':6s} "
                             + (f"{rec['ms']:9.3f} ms  peak {rec['peak_mb']:8.1f} MB" if "ms" in rec
                                else rec["error"]))
                f.flush()
                del entries
    return records, write_report(records, out_dir, ceilings)


def write_report(records, out_dir, ceilings=None) -> str:
    """out_dir/speed.md (the Markdown table, returned), out_dir/speed_rates.md (achieved rates against the
    ceilings, bench/speed_rates.py) and out_dir/speed.png from the records."""
    md = markdown(records)
    with open(os.path.join(out_dir, "speed.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out_dir, "speed_rates.md"), "w") as f:
        f.write(rates_markdown(records, ceilings))
    plot(records, os.path.join(out_dir, "speed.png"))
    return md
