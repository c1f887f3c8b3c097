"""What `attnzoo linearize` shows and writes: progress bars, results.jsonl, a summary table
(summary.md and the terminal) and a plot of the training loss per stage (loss.png)."""

from __future__ import annotations

import json
import os

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table


class LinearizeProgress:
    """One bar per stage; `stage(name)` returns the on_step(step, loss) callback of a new bar."""

    def __init__(self, *, quiet: bool = False):
        self.console = Console(stderr=True)
        self.progress = None if quiet else Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=self.console)

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def stage(self, name: str, total: int | None = None):
        if self.progress is None:
            return None
        task = self.progress.add_task(name, total=total, info="")

        def on_step(step, loss):
            self.progress.update(task, completed=step, info=f"loss {loss:.4g}")
        return on_step


def append_jsonl(path: str, record: dict):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _pct(x):
    return "-" if x is None else f"{100 * x:.1f}%"


def byte_lm_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    lengths = sorted({k for r in records for k in r.get("passkey", {})}, key=lambda k: int(k[:-1]))
    head = ["model", "pattern", "val bpb"] + [f"passkey {k}" for k in lengths] + ["tokens (share of teacher's)"]
    rows = []
    for r in records:
        if r["model"] == "teacher":
            tok = f"{r['teacher_tokens']:,} (100%)"
        elif r["model"] == "linearized":
            parts = [f"{s}: {r[s]['tokens']:,} ({_pct(r[s]['token_share'])})" for s in ("stage1", "stage2") if s in r]
            tok = "; ".join(parts)
        elif r["model"] == "scratch":
            tok = f"{r['scratch']['tokens']:,} ({_pct(r['scratch']['token_share'])})"
        else:
            tok = "stage 1 only"
        name = {"linearized": "stage 1+2" if "stage2" in r else "stage 1", "stage1_only": "stage 1"}.get(
            r["model"], r["model"])
        rows.append([name, r["pattern"], f"{r['bpb']:.3f}"] + [_pct(r["passkey"].get(k)) for k in lengths] + [tok])
    return head, rows


def minilm_rows(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    lengths = sorted({k for r in records for k in r.get("throughput", {})}, key=int)
    head = (["model", "student", "cos(teacher, student)", "top-1 agree", "top-5 overlap"]
            + [f"tok/s @{k}" for k in lengths])
    rows = []
    for r in records:
        tp = r.get("throughput", {})
        rows.append([r["model"], r.get("student", "-"), _fmt(r.get("cosine")), _fmt(r.get("top1")),
                     _fmt(r.get("top5"))] + [_fmt_int(tp.get(k)) for k in lengths])
    return head, rows


def _fmt(x):
    return "-" if x is None else f"{x:.3f}"


def _fmt_int(x):
    return "-" if x is None else f"{x:,.0f}"


def markdown(head, rows) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def print_table(head, rows, title: str):
    t = Table(title=title)
    for h in head:
        t.add_column(h)
    for r in rows:
        t.add_row(*r)
    Console().print(t)


def plot_losses(records: list[dict], path: str):
    """loss.png: one panel per stage (stage1 MSE, stage2, scratch), one line per student."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("stage1", "stage 1: attention-transfer loss"), ("stage2", "stage 2: fine-tuning loss"),
              ("scratch", "from scratch: task loss")]
    panels = [(k, t) for k, t in panels if any(k in r for r in records)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for r in records:
            if key in r and r[key].get("history"):
                h = r[key]["history"]
                ax.plot([p["step"] for p in h], [p["loss"] for p in h], label=r.get("pattern") or r.get("student"))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
