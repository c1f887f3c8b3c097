"""`attnzoo linearize`: one command per teacher (LoLCATs arXiv:2410.10254 / LAWCAT arXiv:2509.18467).

    attnzoo linearize --teacher byte-lm --student lawcat,gla,gated_deltanet,based,gla*3+softmax --size cpu --out DIR
    attnzoo linearize --teacher minilm --student lawcat,gla,gated_deltanet --size cpu --out DIR

Writes DIR/results.jsonl (one record per model, appended as each finishes), DIR/summary.md (the
table, with the machine line), DIR/loss.png (training loss per stage) and DIR/quality.png (bpb and
passkey vs length, or embedding agreement and throughput vs length); checkpoints of every
stage under DIR/<student>/ make a second run of the same command resume where the first stopped.
"""

from __future__ import annotations

import os
import time

import torch

from attnzoo.bench.machine import machine_line
from attnzoo.distill.report import (
    LinearizeProgress, append_jsonl, byte_lm_rows, markdown, minilm_rows, plot_byte_lm, plot_losses, plot_minilm,
    print_table, read_jsonl,
)

TEACHERS = ("byte-lm", "minilm")
STAGES = ("1", "2", "both")


def linearize(*, teacher: str, students: list[str], stage: str = "both", size: str = "cpu", out: str,
              device: str = "cpu", seed: int = 0, scratch: bool = True, lora: bool = True,
              quiet: bool = False) -> list[dict]:
    """Run one teacher's experiment into `out` (see the module docstring). lora=False: stage 2 trains
    every parameter (full fine-tuning) instead of LoRA r=8/alpha=16 on q, k, v, o."""
    if teacher not in TEACHERS:
        raise ValueError(f"--teacher must be one of {TEACHERS}, got {teacher!r}")
    if stage not in STAGES:
        raise ValueError(f"--stage must be one of {STAGES}, got {stage!r}")
    if not students:
        raise ValueError("--student names no mixer")
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, "results.jsonl")
    machine = machine_line(device)
    started = time.time()

    def write(rec):
        rec["machine"] = machine
        rec["load_average_1min"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
        append_jsonl(results, rec)

    with LinearizeProgress(quiet=quiet) as progress:
        if teacher == "byte-lm":
            from attnzoo.distill.byte_lm import BYTE_SIZES, run_byte_lm

            _check_size(size, BYTE_SIZES)
            records = run_byte_lm(students, size, out, device=device, stage=stage, seed=seed, scratch=scratch,
                                  lora=lora, progress=progress, write=write)
            head, rows = byte_lm_rows(records)
        else:
            from attnzoo.distill.minilm import MINILM_SIZES, run_minilm

            _check_size(size, MINILM_SIZES)
            records = run_minilm(students, size, out, device=device, stage=stage, seed=seed, lora=lora,
                                 progress=progress, write=write)
            head, rows = minilm_rows(records)
    title = f"linearize {teacher} ({size}, {machine}, {time.time() - started:.0f} s)"
    print_table(head, rows, title)
    write_reports(records, out, teacher=teacher, title=title)
    return records


def write_reports(records: list[dict], out: str, *, teacher: str, title: str):
    """summary.md, loss.png and quality.png of `records` in folder `out`."""
    head, rows = byte_lm_rows(records) if teacher == "byte-lm" else minilm_rows(records)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(f"# {title}\n\n{markdown(head, rows)}\n")
    plot_losses(records, os.path.join(out, "loss.png"))
    (plot_byte_lm if teacher == "byte-lm" else plot_minilm)(records, os.path.join(out, "quality.png"))


def rebuild_reports(out: str, *, teacher: str, title: str):
    """Rewrite the reports of a finished run from its results.jsonl (e.g. after a report change)."""
    records = read_jsonl(os.path.join(out, "results.jsonl"))
    if not records:
        raise ValueError(f"no records in {out}/results.jsonl")
    write_reports(records, out, teacher=teacher, title=title)
    return records


def _check_size(size, sizes):
    if size not in sizes:
        raise ValueError(f"--size must be one of {tuple(sizes)}, got {size!r}")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


__all__ = ["linearize", "read_jsonl", "rebuild_reports"]
