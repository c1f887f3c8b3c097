"""`attnzoo repro`: the seed papers' measurable claims, reproduced at small scale, each with a verdict.

One study per file in this package. A study module defines

    NAME = "sinks"                       # the CLI name
    PAPER = "Gated Attention, arXiv:2505.06708"
    CLAIMS = ("first-token attention share falls", ...)   # what it checks, one line each
    def run(ctx: StudyContext) -> list[Claim]: ...

`run` trains/measures at `ctx.size` ("quick": <= 3 minutes on 2 CPU cores, run by a smoke test;
"full": the GPU size), appends every measurement to `ctx.record(...)` (results.jsonl), draws its plot
with `ctx.savefig(fig)` and returns one `Claim` per row of the verdict table. `run_study` writes
`<out>/<name>/{results.jsonl, <name>.png, summary.md}`.

A study that does not reproduce its paper says so, with the reason: the verdict is computed from the
measurement by a rule stated in the study before running it, never tuned until it agrees.
"""

from attnzoo.repro.base import VERDICTS, Claim, StudyContext, list_studies, run_study

__all__ = ["VERDICTS", "Claim", "StudyContext", "list_studies", "run_study"]
