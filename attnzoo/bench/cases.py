"""The case log of a one-call benchmark script (benchmarks/*_gpu.py and the like): each case runs in its own
try/except, so one failure loses nothing else; a time budget skips what is left once spent; after every case
the JSON file is rewritten (header + records), so a call cut by its time limit keeps what it measured.

    log = CaseLog(out_dir / "sparse_gpu.json", {"machine": machine_line()}, budget_s=300)
    log.run("prefill T=2048", lambda: {"ms": 1.23})      # -> {"case": ..., "ms": 1.23, "wall_s": ...}
    log.records                                           # every record so far, skipped and failed ones too
    args = script_args(__doc__, budget=300.0)             # such a script's OUT, --smoke, --budget (, --only)

only=("time", "mixer") runs only the cases whose names start so (a rerun of the cases a call's limit cut).

A record is {"case": name, **fn(), "wall_s": seconds}, or {"case": name, "error": "Type: message"} (the
traceback is printed), or {"case": name, "skipped": "time budget spent"}. On CUDA the caching allocator is
emptied after each case, so that one case's memory does not count against the next.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch


class CaseLog:
    def __init__(self, path: str | Path, header: dict, *, budget_s: float | None = None, t0: float | None = None,
                 error_chars: int = 800, only: tuple[str, ...] = (), unprinted: tuple[str, ...] = ()):
        self.path, self.header, self.budget_s = Path(path), dict(header), budget_s
        self.only = tuple(only)  # run only the cases whose names start with one of these (all when empty)
        self.unprinted = ("case", *unprinted)  # record keys kept in the file but not in the printed line
        self.t0 = time.time() if t0 is None else t0
        self.error_chars = error_chars
        self.records: list[dict] = []

    def elapsed(self) -> float:
        return time.time() - self.t0

    def run(self, name: str, fn: Callable[[], dict], *, budget_s: float | None = None) -> dict:
        """Run one case (fn returns a dict of results) and record it; budget_s overrides the log's."""
        budget = self.budget_s if budget_s is None else budget_s
        if self.only and not name.startswith(self.only):
            return {"case": name, "skipped": "not selected"}  # not recorded: a rerun of some cases
        if budget is not None and self.elapsed() > budget:
            rec = {"case": name, "skipped": "time budget spent"}
        else:
            t = time.time()
            try:
                rec = {"case": name, **fn(), "wall_s": round(time.time() - t, 1)}
            except Exception as e:  # one failure must not lose the rest
                rec = {"case": name, "error": f"{type(e).__name__}: {e}"[: self.error_chars]}
                traceback.print_exc(limit=4)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self.records.append(rec)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items() if k not in self.unprinted}
        print(f"[{self.elapsed():6.1f}s] {name}: {shown}", flush=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps({**self.header, "records": self.records}, indent=1))
        return rec

    def failed(self) -> list[str]:
        return [r["case"] for r in self.records if "error" in r]

    def skipped(self) -> list[str]:
        return [r["case"] for r in self.records if "skipped" in r]

    def summary(self, keys) -> str:
        """A Markdown table, a row per case: the values of `keys` it has (and error / skipped), and its worst
        `*_rel` error; what a script prints last."""
        lines = ["| case | result |", "|---|---|"]
        for r in self.records:
            shown = [k for k in (*keys, "error", "skipped") if k in r]
            worst = max((v for k, v in r.items() if k.endswith("_rel")), default=None)
            cells = [f"{k} {r[k]:.3g}" if isinstance(r[k], float) else f"{k} {r[k]}" for k in shown]
            lines.append(f"| {r['case']} | {'; '.join(cells)}{'' if worst is None else f'; worst rel {worst:.2e}'} |")
        return "\n".join(lines)


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| in float64 (a script's relative error against a reference)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def cuda_peak_mb(fn):
    """MiB allocated by fn() above what was allocated before it (None off CUDA)."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return round((torch.cuda.max_memory_allocated() - base) / 2**20, 1)


def script_args(doc: str, *, budget: float | None = None, only: bool = False, extra=None,
                argv=None) -> argparse.Namespace:
    """The command line of a one-call benchmark script: OUT (a folder, created), --smoke (tiny shapes on the
    CPU through the Triton interpreter), --budget SECONDS (when the script has a time budget, default
    `budget`), --only PREFIXES (with only: a comma list, parsed to a tuple for CaseLog's only=), and what
    extra(parser) adds (the script's own options). Exits with a message unless CUDA is available or --smoke
    is given."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU through the Triton interpreter")
    if budget is not None:
        p.add_argument("--budget", type=float, default=budget, help="seconds after which remaining cases are skipped")
    if only:
        p.add_argument("--only", default="", help="comma-separated case-name prefixes to run (e.g. 'time,mixer'): "
                       "a rerun")
    if extra is not None:
        extra(p)
    a = p.parse_args(argv)
    if not a.smoke and not torch.cuda.is_available():
        sys.exit("needs CUDA (or --smoke)")
    a.out.mkdir(parents=True, exist_ok=True)
    if only:
        a.only = tuple(x for x in a.only.split(",") if x)
    return a
