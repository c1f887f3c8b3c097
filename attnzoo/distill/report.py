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
        s1 = r.get("after_stage1")
        if s1 and "stage2" in r:      # the same student after stage 1 alone (speed as below)
            rows.append(["stage 1", r["student"], _fmt(s1["cosine"]), _fmt(s1["top1"]), _fmt(s1["top5"])]
                        + ["" for _ in lengths])
        name = {"linearized": "stage 1+2" if "stage2" in r else "stage 1"}.get(r["model"], r["model"])
        rows.append([name, r.get("student", "-"), _fmt(r.get("cosine")), _fmt(r.get("top1")),
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


def plot_byte_lm(records: list[dict], path: str):
    """quality.png: val bpb of teacher / stage 1 / stage 1+2 / scratch per pattern, and passkey accuracy
    against the evaluation length (multiples of the distillation length) per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teacher = next((r for r in records if r["model"] == "teacher"), None)
    patterns = list(dict.fromkeys(r["pattern"] for r in records if r["model"] != "teacher"))
    if teacher is None or not patterns:
        return None
    kinds = [("stage1_only", "stage 1"), ("linearized", "stage 1+2"), ("scratch", "scratch, same tokens")]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(kinds)
    for j, (kind, label) in enumerate(kinds):
        vals = [next((r["bpb"] for r in records if r["model"] == kind and r["pattern"] == p), float("nan"))
                for p in patterns]
        ax.bar([i + (j - 1) * width for i in range(len(patterns))], vals, width, label=label)
    ax.axhline(teacher["bpb"], color="k", ls="--", lw=1, label="softmax teacher")
    ax.set_xticks(range(len(patterns)), patterns, fontsize=8)
    ax.set_ylabel("validation bits per byte (lower is better)")
    ax.legend(fontsize=7)
    lengths = sorted(teacher["passkey"], key=lambda k: int(k[:-1]))
    xs = [int(k[:-1]) for k in lengths]
    bx.plot(xs, [teacher["passkey"][k] for k in lengths], "k--o", label="softmax teacher")
    for p in patterns:
        r = next((r for r in records if r["model"] == "linearized" and r["pattern"] == p), None)
        if r is not None:
            bx.plot(xs, [r["passkey"].get(k, float("nan")) for k in lengths], "-o", label=f"{p} (stage 1+2)")
    bx.axhline(0.1, color="grey", lw=0.8, ls=":", label="chance (1 digit in 10)")
    bx.set_xscale("log", base=2)
    bx.set_xticks(xs, [f"{x}x" for x in xs])
    bx.set_xlabel("passkey prompt length / distillation length")
    bx.set_ylabel("passkey digit accuracy")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_minilm(records: list[dict], path: str):
    """quality.png: cosine / top-1 / top-5 per student, and encoder tokens/s against length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    students = [r for r in records if r["model"] == "linearized"]
    if not students:
        return None
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
    metrics = ("cosine", "top1", "top5")
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        ax.bar([i + (j - 1) * width for i in range(len(students))], [r[m] for r in students], width, label=m)
    ax.set_xticks(range(len(students)), [r["student"] for r in students], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("agreement with the teacher (held-out text)")
    ax.legend(fontsize=7)
    for r in records:
        tp = r.get("throughput") or {}
        if not tp:
            continue
        ks = sorted(tp, key=int)
        style = "k--o" if r["model"] == "teacher" else "-o"
        bx.plot([int(k) for k in ks], [tp[k] for k in ks], style, label=r.get("student", r["model"]))
    bx.set_xscale("log", base=2)
    bx.set_yscale("log")
    bx.set_xlabel("tokens (one sequence)")
    bx.set_ylabel("encoder tokens/s")
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
