"""Compile one fla op into the on-disk Triton cache, so that a timing script started beside it does not
spend its device call compiling fla (fla 0.6.0's ops take 90-250 s each on a cold cache).

    python benchmarks/fla_warm.py OP [OP ...]     # OP: gla, simple_gla, delta, gated_delta, recurrent_delta

Run one process per op in the background at the start of a device call (the compiles are CPU-bound and
serial inside a process; the Triton cache is shared through the file system), then the timing script:
its own fla calls find the kernels compiled (autotuning still runs, in that process, in milliseconds).
It runs fwd+bwd (fwd only for the recurrent op) once in bf16 at H=16, D=128 and at each T given by
--Ts (B·T = 16k tokens, the timing scripts' shapes), with fla's Hopper guard lifted as they do; it
prints the seconds per op and measures nothing else. Speed numbers never come from this script.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def fla_op(name):
    import fla.ops.common.chunk_o as chunk_o

    if hasattr(chunk_o, "TRITON_ABOVE_3_7_1"):
        chunk_o.TRITON_ABOVE_3_7_1 = True  # the timing scripts lift fla's Hopper guard (fla #640) likewise
    if name == "gla":
        from fla.ops.gla import chunk_gla as f
    elif name == "simple_gla":
        from fla.ops.simple_gla import chunk_simple_gla as f
    elif name == "delta":
        from fla.ops.delta_rule import chunk_delta_rule as f
    elif name == "gated_delta":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule as f
    elif name == "recurrent_delta":
        from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as f
    else:
        raise SystemExit(f"unknown op {name!r}")
    return f


def run(name, B, T, H=16, D=128):
    dev, dt = "cuda", torch.bfloat16
    r = lambda *s: torch.randn(*s, device=dev)  # noqa: E731
    q, v = r(B, T, H, D).to(dt), r(B, T, H, D).to(dt)
    k = F.normalize(r(B, T, H, D), dim=-1).to(dt)
    xs = {"q": q, "k": k, "v": v}
    if name == "gla":
        xs["g"] = F.logsigmoid(r(B, T, H, D))
    elif name in ("simple_gla", "gated_delta", "recurrent_delta"):
        xs["g"] = F.logsigmoid(r(B, T, H))
    if "delta" in name:
        xs["beta"] = torch.sigmoid(r(B, T, H)).to(dt)
    grad = name != "recurrent_delta"
    xs = {n: x.requires_grad_(grad) for n, x in xs.items()}
    h0 = r(B, H, D, D).requires_grad_(grad)
    o, ht = fla_op(name)(**xs, scale=D ** -0.5, initial_state=h0, output_final_state=True)
    if grad:
        (o.float().square().sum() + ht.sum()).backward()
    torch.cuda.synchronize()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ops", nargs="+")
    p.add_argument("--Ts", default="2048", help="comma-separated sequence lengths (B = 16384 // T)")
    a = p.parse_args()
    for name in a.ops:
        for T in (int(t) for t in a.Ts.split(",")):
            t0 = time.time()
            try:
                run(name, max(1, 16384 // T), T)
                print(f"fla_warm {name} T={T}: {time.time() - t0:.1f} s", flush=True)
            except Exception as e:  # a warm-up that fails costs the timing script its compile, nothing more
                print(f"fla_warm {name} T={T}: failed after {time.time() - t0:.1f} s: {type(e).__name__}: "
                      f"{str(e)[:200]}", flush=True)


if __name__ == "__main__":
    main()
