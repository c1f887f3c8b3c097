"""Whole-gradient precision of gla / hgrn2 / retnet models under CUDA bf16 autocast, against a float64
reference of the same model on the CPU (the question left open in notes/triton_gla.md, session 2).

    python benchmarks/gla_bf16_grad_check.py [--out results.jsonl]

Model: the zoo's 2-layer LanguageModel (quick sizes: d_model 64, T 64, B 32, vocab 128, no MLP),
one forward + backward of the cross-entropy. Variants on the GPU, each against the float64 CPU
gradient (relative 2-norm over all parameters, and of the logits):
  - bf16 autocast, Triton, factorised A in float32 operands (triton_vector_fast.FACTOR_F32, default)
  - bf16 autocast, Triton, factorised A in bf16 operands (FACTOR_F32 = False; session 2's kernels)
  - bf16 autocast, torch path (impl forced to "torch": the op computes in float32, autocast off)
  - float32, Triton (tf32 dots)
The earlier check (autocast_cuda_check.py) compared bf16 against float32 *Triton*, which carries
its own tf32 error; this one compares everything against float64.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import attnzoo  # noqa: E402
from attnzoo.bench.zoo import machine_line  # noqa: E402
from attnzoo.bench.zoo.presets import QUICK_MIXER_KWARGS  # noqa: E402
from attnzoo.models import LanguageModel  # noqa: E402
from attnzoo.ops.linear.triton import vector_fast as fast  # noqa: E402


def model_and_data(name, vocab=128, d=64, B=32, T=64):
    kwargs = {**attnzoo.get_card(name).example_kwargs, **QUICK_MIXER_KWARGS.get(name, {})}
    torch.manual_seed(0)
    lm = LanguageModel(vocab, d, 2, name, mixer_kwargs={name: kwargs}, mlp_ratio=0)
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, vocab, (B, T), generator=gen) for _ in range(2))
    return lm, x, y


def grads(lm, x, y, amp: bool):
    lm.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = lm(x)
    loss = F.cross_entropy(logits.double().reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    g = torch.cat([p.grad.double().flatten().cpu() for p in lm.parameters() if p.grad is not None])
    return logits.detach().double().cpu(), g


@contextlib.contextmanager
def setting(factor_f32=True, torch_path=False):
    import attnzoo.ops.linear.api as api

    old = fast.FACTOR_F32
    fast.FACTOR_F32 = factor_f32
    real = api.gated_linear_attention
    if torch_path:
        def forced(*a, **kw):
            kw["impl"] = "torch"
            return real(*a, **kw)
        _patch_callers(forced)
    try:
        yield
    finally:
        fast.FACTOR_F32 = old
        if torch_path:
            _patch_callers(real)


def _patch_callers(fn):
    """Every imported module that bound gated_linear_attention by name gets fn."""
    for mod in list(sys.modules.values()):
        if mod is not None and getattr(mod, "__name__", "").startswith("attnzoo.mixers") \
                and hasattr(mod, "gated_linear_attention"):
            mod.gated_linear_attention = fn


VARIANTS = (
    ("bf16 triton, A f32 operands", True, dict(factor_f32=True)),
    ("bf16 triton, A bf16 operands", True, dict(factor_f32=False)),
    ("bf16 torch path", True, dict(torch_path=True)),
    ("fp32 triton (tf32)", False, dict()),
)


def rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mixers", default="gla,hgrn2,retnet")
    ap.add_argument("--device", default="cuda", help="cpu only exercises the script (no Triton there)")
    ap.add_argument("--out", default=os.path.join(os.environ.get("OUT", "."), "gla_bf16_grad.jsonl"))
    a = ap.parse_args()
    machine = machine_line(a.device)
    rows = []
    for name in a.mixers.split(","):
        lm, x, y = model_and_data(name)
        ref_logits, ref_g = grads(lm.double(), x, y, amp=False)
        lm = lm.float().to(a.device)
        for label, amp, kw in VARIANTS:
            with setting(**kw):
                logits, g = grads(lm, x.to(a.device), y.to(a.device), amp)
            rows.append(dict(mixer=name, variant=label, grad_rel=round(rel(g, ref_g), 5),
                             logits_rel=round(rel(logits, ref_logits), 5), machine=machine))
            print(f"{name:7s} {label:30s} grad {rows[-1]['grad_rel']:.4f}  logits {rows[-1]['logits_rel']:.4f}",
                  flush=True)
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
