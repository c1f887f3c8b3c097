"""HaloAttention (block 8, halo 3) vs global 2-D attention with the same relative logits, on the CPU.

Forward + backward time per call of one HaloAttention layer at dim 64, 8 heads, batch 2, for
square images; "global" is the same layer with block = image size and halo 0 (every pixel attends
to every pixel). Prints a table and appends JSON lines to benchmarks/results/halo_speed_cpu.jsonl.

    python benchmarks/halo_speed_cpu.py [--sizes 16 32 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from attnzoo.bench.timing import call_times
from attnzoo.vision.halo import HaloAttention


def time_call(m, x, repeats: int) -> float:
    """Mean wall seconds of forward + backward after two warm-up calls (attnzoo.bench.timing)."""
    times = call_times(lambda: m(x).sum().backward(), repeats=repeats, warmup=2)
    return sum(times) / len(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(__file__).parent / "results" / "halo_speed_cpu.jsonl"
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} thread(s), torch {torch.__version__}"
    print(f"machine: {machine}")
    print(f"{'size':>5} {'halo ms':>9} {'global ms':>10} {'speed-up':>9}")
    for s in args.sizes:
        x = torch.randn(2, s, s, 64)
        torch.manual_seed(0)
        halo = HaloAttention(64, n_heads=8, block_size=8, halo_size=3)
        full = HaloAttention(64, n_heads=8, block_size=s, halo_size=0)
        th, tg = time_call(halo, x, args.repeats), time_call(full, x, args.repeats)
        print(f"{s:>5} {th * 1e3:>9.1f} {tg * 1e3:>10.1f} {tg / th:>9.2f}")
        with out.open("a") as f:
            f.write(json.dumps({"size": s, "halo_s": th, "global_s": tg, "machine": machine}) + "\n")


if __name__ == "__main__":
    main()
