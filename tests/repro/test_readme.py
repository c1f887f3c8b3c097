"""The verdict README gathers every summary.md, tallies verdicts and names the studies still missing."""

import pytest

from attnzoo.repro.base import Claim, summary_markdown
from attnzoo.repro.readme import read_summary, write_readme


def _write(root, name, verdicts):
    claims = [Claim(f"claim {i}", "p", "o", v, "c") for i, v in enumerate(verdicts)]
    (root / name).mkdir(parents=True)
    md = summary_markdown(name.split("/")[0], f"Paper {name.split('/')[0]}, arXiv:0", claims, "cpu", "medium", 1)
    (root / name / "summary.md").write_text(md)


def test_readme_gathers_tables_and_tallies(tmp_path):
    _write(tmp_path, "b-study", ["reproduced", "not reproduced"])
    _write(tmp_path, "a-study/medium-cpu", ["partly"])
    _write(tmp_path, "a-study/full-h100", ["reproduced"])
    (tmp_path / "a-study/full-h100/notes.md").write_text("Ran on a quiet GPU.\n")
    text = write_readme(tmp_path, known=["b-study", "a-study", "missing"]).read_text()
    assert "| **reproduced** | c |\n\nRan on a quiet GPU.\n\nFiles: [a-study/full-h100/]" in text
    assert text.index("## b-study") < text.index("## a-study-full-h100") < text.index("## a-study-medium-cpu")
    assert "| [b-study](#b-study) | - | Paper b-study, arXiv:0 | 2 | 1 | 0 | 1 | 0 |" in text
    assert "| [a-study](#a-study-medium-cpu) | medium-cpu | Paper a-study, arXiv:0 | 1 | 0 | 1 | 0 | 0 |" in text
    assert "| **all** | | | 4 | 2 | 1 | 1 | 0 |" in text
    assert "Files: [a-study/medium-cpu/](a-study/medium-cpu/)" in text
    assert "No committed summary yet: missing." in text
    assert "| claim 1 | p | o | **not reproduced** | c |" in text


def test_untestable_rows_are_not_counted_as_not_reproduced(tmp_path):
    root = tmp_path / "a"
    root.mkdir()
    claims = [Claim("c0", "p", "o", "untestable", "x; untestable: the control did not learn"),
              Claim("c1", "p", "o", "not reproduced", "x; untestable: the all-softmax stack did not learn MQAR"),
              Claim("c2", "p", "o", "not reproduced", "rule: spread <= 3%"),
              Claim("c3", "p", "o", "reproduced", "x")]
    (root / "summary.md").write_text(summary_markdown("a", "Paper a", claims, "cpu", "full", 1))
    assert read_summary(root / "summary.md")["verdicts"] == ["untestable", "untestable", "not reproduced",
                                                             "reproduced"]
    text = write_readme(tmp_path, known=["a"]).read_text()
    assert "| study | run | paper | claims | reproduced | partly | not reproduced | untestable |" in text
    assert "| [a](#a) | - | Paper a | 4 | 1 | 0 | 1 | 2 |" in text


def test_read_summary_refuses_other_files(tmp_path):
    (tmp_path / "x.md").write_text("# something else\n")
    with pytest.raises(ValueError, match="not a repro summary"):
        read_summary(tmp_path / "x.md")


def test_cli_writes_the_readme(tmp_path, capsys):
    from attnzoo.cli import main

    _write(tmp_path, "a-study", ["partly"])
    assert main(["repro", "--readme", str(tmp_path)]) == 0
    assert "| [a-study](#a-study) |" in (tmp_path / "README.md").read_text()
