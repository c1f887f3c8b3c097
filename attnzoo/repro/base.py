"""The repro study contract: context (size, seed, device, output folder), claims, summary writer."""

from __future__ import annotations

import importlib
import json
import pkgutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from attnzoo.bench.machine import machine_line  # noqa: F401  (re-exported: studies and scripts import it here)

VERDICTS = ("reproduced", "partly", "not reproduced", "untestable")
# "untestable": the run cannot decide the claim (a control that did not learn, variants that ended at unequal
# steps); the row's conditions say why. It is counted apart from "not reproduced" (readme.py).
UNTESTABLE = VERDICTS[3]
SIZES = ("quick", "medium", "full")  # medium: a CPU size for committed results (<= 5 min on 2 cores)


@dataclass
class Claim:
    """One row of the verdict table: the paper's claim, its number, ours, the verdict and why."""

    claim: str
    paper: str
    ours: str
    verdict: str
    conditions: str = ""

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def verdict(ok: bool, partly: bool = False, untestable: str = "") -> str:
    """The rule most studies use: all of the claim holds -> reproduced; some -> partly; else not.
    A non-empty `untestable` (the reason, stated in the row's conditions) overrides: "untestable"."""
    if untestable:
        return UNTESTABLE
    return VERDICTS[0] if ok else VERDICTS[1] if partly else VERDICTS[2]


@dataclass
class StudyContext:
    """What a study is given: its size, seed, torch device, output folder and a progress printer."""

    name: str
    out: Path
    size: str = "quick"
    seed: int = 0
    device: str = "cpu"
    quiet: bool = False
    resume: bool = False            # keep <out>/results.jsonl; its rows (this size and seed) are `previous`
    started: float = field(default_factory=time.time)
    previous: list = field(default_factory=list)

    def __post_init__(self):
        if self.size not in SIZES:
            raise ValueError(f"size must be one of {SIZES}, got {self.size!r}")
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self._results = self.out / "results.jsonl"
        if self.resume and self._results.exists():
            rows = [json.loads(line) for line in self._results.read_text().splitlines() if line.strip()]
            self.previous = [r for r in rows if r.get("size") == self.size and r.get("seed") == self.seed
                             and "claim" not in r]
            # the earlier rows stay, but not its claims: they are written again at the end
            self._results.write_text("".join(json.dumps(r, default=float) + "\n" for r in self.previous))
        else:
            self._results.write_text("")

    @property
    def quick(self) -> bool:
        return self.size == "quick"

    def record(self, **row):
        """Append one measurement (a flat dict of JSON values) to results.jsonl."""
        row = {"study": self.name, "size": self.size, "seed": self.seed, **row}
        with self._results.open("a") as f:
            f.write(json.dumps(row, default=float) + "\n")

    def log(self, msg: str):
        if not self.quiet:
            print(f"[{self.name} {time.time() - self.started:6.1f}s] {msg}", flush=True)

    def savefig(self, fig, stem: str | None = None) -> Path:
        import matplotlib.pyplot as plt

        path = self.out / f"{stem or self.name}.png"
        fig.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(fig)
        return path


def _modules():
    import attnzoo.repro as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name in ("base",) or info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"attnzoo.repro.{info.name}")
        if hasattr(mod, "run") and hasattr(mod, "NAME"):
            yield mod


def list_studies() -> dict:
    """{name: module} of every study in the package."""
    return {m.NAME: m for m in _modules()}


def summary_markdown(name: str, paper: str, claims: list[Claim], machine: str, size: str, seconds: float) -> str:
    head = "| claim | paper | ours | verdict | conditions |\n|---|---|---|---|---|\n"
    rows = "".join(f"| {c.claim} | {c.paper} | {c.ours} | **{c.verdict}** | {c.conditions} |\n" for c in claims)
    return (f"# repro: {name}\n\n{paper}\n\nSize `{size}`, {seconds:.0f} s on {machine}.\n\n{head}{rows}")


def run_study(name: str, out: str | Path = "runs/repro", size: str = "quick", seed: int = 0,
              device: str = "cpu", quiet: bool = False, resume: bool = False) -> list[Claim]:
    """Run one study; writes <out>/<name>/{results.jsonl, PNG, summary.md}; returns its claims. With
    resume, results.jsonl's rows of this size and seed are kept and given to the study (ctx.previous): a
    study that records its runs as they finish (hybrid-ratio) skips those already there."""
    studies = list_studies()
    if name not in studies:
        raise ValueError(f"unknown study {name!r}; known: {', '.join(sorted(studies))}")
    mod = studies[name]
    ctx = StudyContext(name=name, out=Path(out) / name, size=size, seed=seed, device=device, quiet=quiet,
                       resume=resume)
    claims = mod.run(ctx)
    if not claims or not all(isinstance(c, Claim) for c in claims):
        raise TypeError(f"study {name} must return a non-empty list of Claim")
    md = summary_markdown(name, mod.PAPER, claims, machine_line(device), size, time.time() - ctx.started)
    (ctx.out / "summary.md").write_text(md)
    with (ctx.out / "results.jsonl").open("a") as f:
        for c in claims:
            f.write(json.dumps({"study": name, "size": size, "seed": seed, "claim": asdict(c)}) + "\n")
    return claims
