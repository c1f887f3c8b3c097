"""Eager vs torch.compile (inductor) training step of the zoo's quick models on one GPU (issue #19 item 2).

    python benchmarks/compile_gpu.py OUT_DIR             # on a CUDA machine, about 7 minutes
    python benchmarks/compile_gpu.py OUT_DIR --smoke     # CPU, tiny sizes, aot_eager: checks the script
    python benchmarks/compile_gpu.py OUT_DIR --budget-s 240   # start no new mixer after 240 s (default 330)

The same bench as `attnzoo bench compile` (attnzoo/bench/compile_bench.py: fwd + bwd + AdamW of the
zoo's 2-layer model at the quick preset's T=64, d_model 64, batch 64; eager and compiled stepped in
interleaved rounds, medians), over the mixers in PRIORITY order (one per family first), no new
mixer after BUDGET_S seconds (the rest are recorded as skipped). Writes OUT_DIR/compile/compile_cuda.jsonl
(the machine line: GPU, CUDA, torch, Triton; one record per mixer) and OUT_DIR/compile/compile_cuda.md.
Copy both to benchmarks/results/compile/ in the repository.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace

import torch

from attnzoo.bench.compile_bench import run_compile_bench
from attnzoo.bench.zoo.models import default_mixers
from attnzoo.bench.zoo.presets import get_preset

BUDGET_S = 330  # the last mixer started may take ~1.5 min more (compile, 32 steps): ~7 minutes in all
PRIORITY = ("softmax", "gla", "gated_deltanet", "mamba", "hyena", "rwkv6", "sliding_window", "based", "mamba2",
            "deltanet", "retnet", "h3", "base_conv", "gated_softmax", "block_sparse", "moh")


def ordered(mixers: list[str]) -> list[str]:
    return [m for m in PRIORITY if m in mixers] + [m for m in mixers if m not in PRIORITY]


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    out, smoke = os.path.join(argv[0], "compile"), "--smoke" in argv
    budget_s = float(argv[argv.index("--budget-s") + 1]) if "--budget-s" in argv else BUDGET_S
    preset = get_preset("quick")
    if smoke:
        preset = replace(preset, grid=((8, 2),), d_models=(16,), batch_size=4, batch_sizes=None)
        run_compile_bench(["softmax", "gla"], preset=preset, device="cpu", steps=1, rounds=1, threads=1, out=out,
                          backend="aot_eager", budget_s=60)
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device (use --smoke on a CPU)", file=sys.stderr)
        return 1
    run_compile_bench(ordered(default_mixers(preset)), preset=preset, device="cuda", steps=10, rounds=3, out=out,
                      budget_s=budget_s)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
