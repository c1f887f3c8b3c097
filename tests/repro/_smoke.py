"""The smoke check every study test runs: quick size into tmp_path, files and one verdict per claim."""

import json

from attnzoo.repro.base import VERDICTS, run_study


def run_quick(name, tmp_path):
    claims = run_study(name, out=tmp_path, size="quick", quiet=True)
    out = tmp_path / name
    assert (out / "results.jsonl").stat().st_size > 0 and (out / f"{name}.png").stat().st_size > 0
    md = (out / "summary.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    assert len(rows) == len(claims) >= 1
    for c, row in zip(claims, rows):
        assert c.claim in row and c.verdict in VERDICTS and f"**{c.verdict}**" in row
        assert row.count(" | ") == 4, f"a '|' inside a cell breaks the table: {row}"
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sum("claim" in r for r in records) == len(claims)
    return claims, records
