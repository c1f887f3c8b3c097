"""Prompt tuning adapts a frozen attention layer: only prompt keys/values are trained.

Task: a teacher = a frozen softmax attention layer with 4 hidden prompt keys/values; students =
the same frozen weights with fresh prompts, trained (prompt parameters only) to match the
teacher's outputs on random sequences x [B, T, d]. The exact student can represent the teacher
exactly; the APT-style student (per-token prompt term, see attnzoo/mixers/prompt_tuning.py) can
only approximate it. Prints each student's validation MSE relative to its MSE before training.

    python examples/prompt_tuning_teacher.py            # ~20 s on a 2-core CPU
    python examples/prompt_tuning_teacher.py --small    # a few seconds (smoke test)
"""

from __future__ import annotations

import time

import torch

import attnzoo
from _common import example_args, fit, report, validation_mse


def main(argv=None) -> dict:
    args = example_args(__doc__, argv, default_steps=400, small_steps=5)
    d, T, batch = 32, (8 if args.small else 32), (4 if args.small else 32)
    teacher = attnzoo.build("prompt_tuning", d_model=d, n_heads=4, n_prompts=4, mode="exact")
    with torch.no_grad():
        teacher.prompt_v.mul_(8.0)  # prompts that matter
        teacher.prompt_k.mul_(3.0)
    teacher.requires_grad_(False)
    g = torch.Generator().manual_seed(args.seed)
    xv = torch.randn(64, T, d, generator=torch.Generator().manual_seed(1234))
    yv = teacher(xv)
    t0 = time.time()
    out = {}
    for mode in ("exact", "apt"):
        student = attnzoo.build("prompt_tuning", d_model=d, n_heads=4, n_prompts=4, mode=mode)
        base = {k: v for k, v in teacher.state_dict().items() if not k.startswith("prompt_")}
        student.load_state_dict(base, strict=False)
        student.requires_grad_(False)
        params = student.prompt_parameters()
        for p in params:
            p.requires_grad_(True)
        before = validation_mse(student, xv, yv)
        fit(params, lambda: torch.randn(batch, T, d, generator=g),
            lambda x, s=student: (s(x) - teacher(x)).square().mean(), steps=args.steps, lr=3e-2)
        after = validation_mse(student, xv, yv)
        out[mode] = after / before
        print(f"  {mode:5s} student: validation MSE {before:.4f} -> {after:.4f} ({after / before:.3f} of the start)")
    learned = out["exact"] < 0.1
    report("prompt_tuning_teacher", steps=args.steps, t0=t0, each=True,
           result=f"relative MSE exact {out['exact']:.3f}, apt {out['apt']:.3f}", learned=learned)
    return {"relative_mse": out["exact"], "apt_relative_mse": out["apt"], "learned": learned}

if __name__ == "__main__":
    main()
