"""benchmarks/ holds results and only the scripts that the README or a results file names (issue #17):
every benchmarks/*.py is named by the README or by a text file under benchmarks/results/, and none
imports the CLI (a script reuses attnzoo's modules; the CLI only wires them together)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
TEXT = {".md", ".txt", ".json", ".jsonl"}


def scripts():
    return sorted(BENCH.glob("*.py"))


def naming_text() -> str:
    parts = [(ROOT / "README.md").read_text(encoding="utf-8")]
    parts += [p.read_text(encoding="utf-8", errors="replace") for p in (BENCH / "results").rglob("*")
              if p.is_file() and p.suffix in TEXT]
    return "\n".join(parts)


def imported_modules(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return mods


def test_every_script_is_named_by_the_readme_or_a_results_file():
    text = naming_text()
    assert len(scripts()) >= 5
    unnamed = [p.name for p in scripts() if p.name not in text]
    assert unnamed == [], f"scripts no README line or results file names: {unnamed}"


def test_no_script_imports_the_cli():
    offenders = [p.name for p in scripts() if any(m == "attnzoo.cli" or m.startswith("attnzoo.cli.")
                                                  for m in imported_modules(p))]
    assert offenders == []


def test_the_import_walk_sees_a_cli_import(tmp_path):
    p = tmp_path / "s.py"
    p.write_text("def main():\n    from attnzoo.cli import main as m\n    m()\n")
    assert "attnzoo.cli" in imported_modules(p)
