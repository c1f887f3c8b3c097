"""Shared setup of benchmarks/gpu_delta.py and gpu_delta_timing.py: the device, shapes and dtype
(tiny, float32 and the Triton interpreter under --smoke), inputs, the providers (ours, the torch
chunked path, fla where importable), relative errors and the timer. Imported first: it sets
TRITON_INTERPRET=1 before triton is imported."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnzoo.bench.timing import ms_timer  # noqa: E402
from attnzoo.ops.delta.chunk import chunk_delta_rule  # noqa: E402
from attnzoo.ops.delta.reference import delta_rule_reference  # noqa: E402, F401 (gpu_delta.py's reference)
from attnzoo.ops.delta.triton import triton_delta_rule  # noqa: E402

DEV = "cpu" if SMOKE else "cuda"
DT = torch.float32 if SMOKE else torch.bfloat16  # the interpreter cannot multiply bf16 tiles
H, D = (2, 16) if SMOKE else (16, 128)
TOKENS = 128 if SMOKE else 16384
TOL = 1e-3 if SMOKE else 2e-2
NAMES = ("o", "S", "dq", "dk", "dv", "dbeta", "dg", "dh0")


def machine():
    import triton

    if SMOKE:
        return {"gpu": None, "torch": torch.__version__, "triton": triton.__version__, "smoke": True}
    from attnzoo.bench.speed import machine_line

    return {**machine_line()["machine"], "dtype": str(DT), "H": H, "D": D}


def fla_ops():
    """fla's chunked and recurrent delta-rule ops with the Hopper guard lifted, or {} (missing)."""
    if SMOKE:
        return {}
    try:
        import fla.ops.common.chunk_o as chunk_o
        from fla.ops.delta_rule import chunk_delta_rule as fla_delta
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gated
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_recurrent
    except Exception as e:
        print("fla not importable:", type(e).__name__, str(e)[:200])
        return {}
    if hasattr(chunk_o, "TRITON_ABOVE_3_7_1"):
        chunk_o.TRITON_ABOVE_3_7_1 = True  # speed and error only (fla #640)
    return {"gated": fla_gated, "plain": fla_delta, "recurrent": fla_recurrent}


FLA = fla_ops()


def inputs(B, T, gate, seed=0, n_state=None, dtype=None, d=D):
    dtype = dtype or DT
    gen = torch.Generator(device=DEV).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, device=DEV)  # noqa: E731
    q, k, v = r(B, T, H, d), F.normalize(r(B, T, H, d), dim=-1), r(B, T, H, d)
    beta = torch.sigmoid(r(B, T, H))
    g = {"weak": F.logsigmoid(r(B, T, H) + 4.0), "strong": F.logsigmoid(r(B, T, H))}.get(gate)
    h0 = r(n_state or B, H, d, d)
    return [q.to(dtype), k.to(dtype), v.to(dtype), beta.to(dtype), g, h0]


def ours(q, k, v, beta, g, **kw):
    return triton_delta_rule(q, k, v, beta, g, **kw)


def torch_chunked(q, k, v, beta, g, **kw):
    return chunk_delta_rule(q, k, v, beta, g, **kw)


def fla_call(q, k, v, beta, g, *, scale, initial_state=None, output_final_state=False, cu_seqlens=None):
    if g is None:
        return FLA["plain"](q=q, k=k, v=v, beta=beta, scale=scale, initial_state=initial_state,
                            output_final_state=output_final_state, cu_seqlens=cu_seqlens)
    return FLA["gated"](q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=initial_state,
                        output_final_state=output_final_state, cu_seqlens=cu_seqlens)


def fwd_bwd(fn, ins, do, dS, **kw):
    xs = [t.detach().clone().requires_grad_(True) if t is not None else None for t in ins]
    o, S = fn(*xs[:5], scale=xs[0].shape[-1] ** -0.5, initial_state=xs[5], output_final_state=True, **kw)
    torch.autograd.backward([o, S], [do.to(o.dtype), dS])
    return [o.detach(), S.detach()] + [t.grad if t is not None else None for t in xs]


def rel(a, b):
    if a is None or b is None:
        return None
    a, b = a.double(), b.double()
    e = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
    return e if e == e else float("nan")



bench_ms = ms_timer(DEV, cpu_repeats=2, cpu_warmup=1)  # smoke: the Triton interpreter's times mean nothing



T0 = time.time()
BUDGET = [270.0]  # seconds after which remaining cases (and tuning variants) are skipped
