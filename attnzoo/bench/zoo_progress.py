"""Live progress of a zoo sweep (rich): one bar for the whole sweep, one for the run in flight."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def describe(spec: dict) -> str:
    pairs = f" D={spec['num_pairs']}" if spec.get("num_pairs") else ""
    return f"{spec['mixer']} d={spec['d_model']} lr={spec['lr']:.2g} T={spec['seq_len']}{pairs}"


class ZooProgress:
    def __init__(self, *, total: int, quiet: bool = False):
        self.quiet = quiet
        self.console = Console(stderr=True)
        self.progress = None if quiet else Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"), console=self.console, transient=False)
        self.total = total
        self.overall = None
        self.run = None

    def __enter__(self):
        if self.progress is not None:
            self.progress.__enter__()
            self.overall = self.progress.add_task("zoo", total=self.total, info="")
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start_run(self, spec: dict, steps: int):
        if self.progress is None:
            return
        if self.run is not None:
            self.progress.remove_task(self.run)
        self.run = self.progress.add_task(f"  {describe(spec)}", total=steps, info="")

    def step(self, step: int, loss: float):
        if self.run is not None:
            self.progress.update(self.run, completed=step)

    def eval(self, step: int, loss: float, acc: float):
        if self.run is not None:
            self.progress.update(self.run, info=f"loss {loss:.3f} acc {acc:.3f}")

    def finish_run(self, rec: dict):
        if self.progress is None:
            return
        if self.run is not None:
            self.progress.remove_task(self.run)
            self.run = None
        acc = "error" if rec.get("accuracy") is None else f"acc {rec['accuracy']:.3f}"
        self.progress.console.print(f"{describe(rec)}: {acc}, {rec.get('steps', 0)} steps, {rec['seconds']:.0f} s"
                                    + (f"  ({rec['error']})" if rec.get("error") else ""))
        self.progress.advance(self.overall)
