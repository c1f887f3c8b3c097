"""Every causal mixer under CUDA bf16 autocast, as the zoo trains them (issue #6): a GPU check.

    .venv/bin/python benchmarks/autocast_cuda_check.py                 # d_model 64, T 64, B 32
    .venv/bin/python benchmarks/autocast_cuda_check.py --d 128 --T 128 --device cpu   # CPU autocast

Per mixer (the zoo's quick sizes: the card's example_kwargs updated by QUICK_MIXER_KWARGS), in one
process: a 2-layer LanguageModel as the zoo builds it; one forward + backward in float32 and one
under bf16 autocast (backward outside the region, as the trainer does; inside with
--backward-in-autocast); prints whether the amp
step ran, the loss, whether every gradient is finite, the relative error of logits and gradient vs
float32, the time of the first amp step (JIT included) and the median of 5 more, and which
gated_linear_attention implementation ran with which input dtypes (a spy on the dispatch), so one
sees that Triton still gets bf16 under autocast. Exit status 1 if any mixer failed. Writes
benchmarks/results/autocast_<device>.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F

import attnzoo
from attnzoo.bench.timing import call_times, median
from attnzoo.bench.zoo import default_mixers, machine_line
from attnzoo.bench.zoo.presets import QUICK_MIXER_KWARGS
from attnzoo.models import LanguageModel


def _spy_on_gla(log: list):
    """Record (impl, dtypes) of every gated_linear_attention call that reaches an implementation."""
    import attnzoo.ops.linear.chunk as chunk
    import attnzoo.ops.linear.reference as ref
    import attnzoo.ops.linear.triton.api as tri

    def wrap(mod, name, impl):
        real = getattr(mod, name)

        def spy(q, k, v, g=None, **kw):
            log.append((impl, str(q.dtype), str(k.dtype), str(v.dtype), None if g is None else str(g.dtype)))
            return real(q, k, v, g, **kw)

        setattr(mod, name, spy)

    wrap(chunk, "chunk_gated_linear_attention", "torch")
    wrap(ref, "gated_linear_attention_reference", "reference")
    wrap(tri, "triton_gated_linear_attention", "triton")


BACKWARD_IN_AUTOCAST = False


def _step(lm, x, y, amp, device):
    lm.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        logits = lm(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        if BACKWARD_IN_AUTOCAST:
            loss.backward()
    if not BACKWARD_IN_AUTOCAST:
        loss.backward()
    return logits.detach().float(), loss.item()


def check(name, args, device, log):
    kwargs = {**attnzoo.get_card(name).example_kwargs, **QUICK_MIXER_KWARGS.get(name, {})}
    torch.manual_seed(0)
    lm = LanguageModel(args.vocab, args.d, 2, name, mixer_kwargs={name: kwargs}, mlp_ratio=0).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, args.vocab, (args.B, args.T), generator=gen).to(device)
    y = torch.randint(0, args.vocab, (args.B, args.T), generator=gen).to(device)
    rec = {"mixer": name, "d_model": args.d, "T": args.T, "B": args.B, "device": device.type,
           "backward_in_autocast": BACKWARD_IN_AUTOCAST}
    try:
        l32, loss32 = _step(lm, x, y, False, device)
        g32 = torch.cat([p.grad.flatten() for p in lm.parameters() if p.grad is not None])
        log.clear()
        out = {}
        first = call_times(lambda: out.update(amp=_step(lm, x, y, True, device)), repeats=1, warmup=0,
                           device=device)[0]
        lbf, lossbf = out["amp"]
        rec["gla_calls"] = sorted(set(log))
        gbf = torch.cat([p.grad.flatten().float() for p in lm.parameters() if p.grad is not None])
        times = call_times(lambda: _step(lm, x, y, True, device), repeats=5, warmup=0, device=device)
        rec.update(ok=True, loss_fp32=round(loss32, 4), loss_amp=round(lossbf, 4),
                   grads_finite=bool(torch.isfinite(gbf).all()),
                   logits_rel=round(((lbf - l32).norm() / l32.norm()).item(), 4),
                   grad_rel=round(((gbf - g32).norm() / g32.norm()).item(), 4),
                   first_step_s=round(first, 3), step_ms=round(1e3 * median(times), 2))
        rec["ok"] = rec["grads_finite"] and bool(torch.isfinite(torch.tensor(lossbf)))
    except Exception as e:  # noqa: BLE001 -- report every mixer, then fail at the end
        rec.update(ok=False, error=f"{type(e).__name__}: {e}"[:300])
    return rec


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--T", type=int, default=64)
    p.add_argument("--B", type=int, default=32)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--mixers", default="", help="comma-separated (default: every causal mixer)")
    p.add_argument("--backward-in-autocast", action="store_true", help="call backward() inside the region")
    args = p.parse_args()
    global BACKWARD_IN_AUTOCAST
    BACKWARD_IN_AUTOCAST = args.backward_in_autocast
    device = torch.device(args.device)
    log: list = []
    _spy_on_gla(log)
    names = [n for n in args.mixers.split(",") if n] or default_mixers()
    out = os.path.join(os.path.dirname(__file__), "results", f"autocast_{device.type}.jsonl")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    failed = []
    with open(out, "a", encoding="utf-8") as f:
        for name in names:
            rec = dict(check(name, args, device, log), machine=machine_line(args.device))
            f.write(json.dumps(rec) + "\n")
            print(json.dumps({k: v for k, v in rec.items() if k != "machine"}), flush=True)
            if not rec["ok"]:
                failed.append(name)
    print(f"{len(names) - len(failed)}/{len(names)} mixers ran under bf16 autocast; failed: {failed or 'none'}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
