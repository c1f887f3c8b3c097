"""Live progress of a zoo sweep (rich): one bar for the whole sweep, one per run in flight."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def describe(spec: dict) -> str:
    pairs = f" D={spec['num_pairs']}" if spec.get("num_pairs") else ""
    return f"{spec['mixer']} d={spec['d_model']} lr={spec['lr']:.2g} T={spec['seq_len']}{pairs}"


class ZooProgress:
    """note(text), start_run(key, spec, steps), step(key, ...), eval(key, ...), finish_run(key, record)."""

    def __init__(self, *, total: int, quiet: bool = False):
        self.console = Console(stderr=True)
        self.progress = None if quiet else Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, transient=False)
        self.total = total
        self.overall = None
        self.runs: dict = {}

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
            self.overall = self.progress.add_task("zoo", total=self.total, info="")
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def note(self, text: str | None):
        """A one-line note for the user (nothing when quiet or text is None)."""
        if text and self.progress is not None:
            self.progress.console.print(text)

    def start_run(self, key, spec: dict, steps: int):
        if self.progress is not None and key not in self.runs:
            self.runs[key] = self.progress.add_task(f"  {describe(spec)}", total=steps, info="")

    def step(self, key, step: int, loss: float):
        if key in self.runs:
            self.progress.update(self.runs[key], completed=step)

    def eval(self, key, step: int, loss: float, acc: float):
        if key in self.runs:
            self.progress.update(self.runs[key], completed=step, info=f"loss {loss:.3f} acc {acc:.3f}")

    def finish_run(self, key, rec: dict):
        if self.progress is None:
            return
        if key in self.runs:
            self.progress.remove_task(self.runs.pop(key))
        acc = "error" if rec.get("accuracy") is None else f"acc {rec['accuracy']:.3f}"
        self.progress.console.print(f"{describe(rec)}: {acc}, {rec.get('steps', 0)} steps, {rec['seconds']:.0f} s"
                                    + (f"  ({rec['error']})" if rec.get("error") else ""))
        self.progress.advance(self.overall)
