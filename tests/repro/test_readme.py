"""The verdict README gathers every summary.md, tallies verdicts and names the studies still missing."""

import pytest

from attnzoo.repro.base import Claim, summary_markdown
from attnzoo.repro.readme import read_summary, write_readme


def _write(root, name, verdicts):
    claims = [Claim(f"claim {i}", "p", "o", v, "c") for i, v in enumerate(verdicts)]
    (root / name).mkdir(parents=True)
    md = summary_markdown(name, f"Paper {name}, arXiv:0", claims, "cpu", "medium", 1)
    (root / name / "summary.md").write_text(md)


def test_readme_gathers_tables_and_tallies(tmp_path):
    _write(tmp_path, "b-study", ["reproduced", "not reproduced"])
    _write(tmp_path, "a-study", ["partly"])
    text = write_readme(tmp_path, known=["b-study", "a-study", "missing"]).read_text()
    assert text.index("## b-study") < text.index("## a-study")          # the known order
    assert "| [b-study](#b-study) | Paper b-study, arXiv:0 | 2 | 1 | 0 | 1 |" in text
    assert "| **all** | | 3 | 1 | 1 | 1 |" in text
    assert "No committed summary yet: missing." in text
    assert "| claim 1 | p | o | **not reproduced** | c |" in text


def test_read_summary_refuses_other_files(tmp_path):
    (tmp_path / "x.md").write_text("# something else\n")
    with pytest.raises(ValueError, match="not a repro summary"):
        read_summary(tmp_path / "x.md")
