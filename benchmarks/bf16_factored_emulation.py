"""CPU emulation of bf16 tensor-core operands in the chunked GLA op: a 2-layer gla / hgrn2 LM
(zoo quick sizes: d_model 64, T 64, B 32), gradient of every parameter against float64, with the
op's batched products (bmm, @, baddbmm_) taking bf16-rounded operands and float32 accumulation,
as the Triton kernels do; the factorised intra-chunk form (chunk_factored.SAFE_LOG = 20) against
the assembled safe form (SAFE_LOG = -1: every row takes it).

    .venv/bin/python benchmarks/bf16_factored_emulation.py

Question it answers (notes/triton_gla.md, session 2): does the factorised form amplify bf16
rounding in the gradients (its gate gradient is a chunk-local reverse sum of q⊙dq − k⊙dk whose
rounding does not cancel)?
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

import attnzoo
import attnzoo.ops.linear.chunk as chunk
import attnzoo.ops.linear.chunk_factored as factored
from attnzoo.bench.zoo.presets import QUICK_MIXER_KWARGS
from attnzoo.models import LanguageModel

REAL = {"bmm": torch.bmm, "matmul": torch.Tensor.__matmul__, "baddbmm_": torch.Tensor.baddbmm_}
BF16_PRODUCTS = {"on": False}


def _r(t):
    return t.to(torch.bfloat16).to(t.dtype) if t.dtype == torch.float32 else t


@contextlib.contextmanager
def _bf16_operands():
    torch.bmm = lambda a, b, *x, **kw: REAL["bmm"](_r(a), _r(b), *x, **kw)
    torch.Tensor.__matmul__ = lambda a, b: REAL["matmul"](_r(a), _r(b))
    torch.Tensor.baddbmm_ = lambda self, a, b, **kw: REAL["baddbmm_"](self, _r(a), _r(b), **kw)
    try:
        yield
    finally:
        torch.bmm, torch.Tensor.__matmul__, torch.Tensor.baddbmm_ = REAL["bmm"], REAL["matmul"], REAL["baddbmm_"]


def _patch_segments():
    for name in ("_segment_forward", "_segment_backward"):
        real = getattr(chunk, name)

        def wrapped(*a, _real=real, **kw):
            with _bf16_operands() if BF16_PRODUCTS["on"] else contextlib.nullcontext():
                return _real(*a, **kw)
        setattr(chunk, name, wrapped)


def grads(name, dtype, safe_log):
    factored.SAFE_LOG = safe_log
    kw = {**attnzoo.get_card(name).example_kwargs, **QUICK_MIXER_KWARGS.get(name, {})}
    torch.manual_seed(0)
    lm = LanguageModel(128, 64, 2, name, mixer_kwargs={name: kw}, mlp_ratio=0).to(dtype)
    gen = torch.Generator().manual_seed(1)
    x, y = (torch.randint(0, 128, (32, 64), generator=gen) for _ in range(2))
    F.cross_entropy(lm(x).reshape(-1, 128).to(dtype), y.reshape(-1)).backward()
    return {n: p.grad.double().clone() for n, p in lm.named_parameters() if p.grad is not None}


def rel(g, ref):
    num = sum(((g[n] - ref[n]) ** 2).sum() for n in ref).sqrt()
    return (num / sum((ref[n] ** 2).sum() for n in ref).sqrt()).item()


def main():
    _patch_segments()
    cases = (("fp32, factorised", False, 20.0), ("fp32, assembled", False, -1.0),
             ("bf16 operands, factorised", True, 20.0), ("bf16 operands, assembled", True, -1.0))
    print(f"{'mixer':6s} {'products':28s} whole-gradient error vs float64")
    for name in ("gla", "hgrn2"):
        ref = grads(name, torch.float64, 20.0)
        for label, bf16, safe_log in cases:
            BF16_PRODUCTS["on"] = bf16
            print(f"{name:6s} {label:28s} {rel(grads(name, torch.float32, safe_log), ref):.4f}")


if __name__ == "__main__":
    main()
