"""The repro contract: claims validated, unknown studies refused, summary table written."""

import pytest

from attnzoo.repro.base import Claim, StudyContext, summary_markdown, verdict


def test_claim_refuses_unknown_verdict():
    with pytest.raises(ValueError, match="verdict must be one of"):
        Claim("c", "1", "2", "yes")


def test_verdict_rule():
    assert verdict(True) == "reproduced"
    assert verdict(False, partly=True) == "partly"
    assert verdict(False) == "not reproduced"
    assert verdict(True, untestable="untestable: the control did not learn") == "untestable"


def test_unknown_study_refused(tmp_path):
    from attnzoo.repro import run_study

    with pytest.raises(ValueError, match="unknown study 'nope'"):
        run_study("nope", out=tmp_path)


def test_context_records_and_bad_size(tmp_path):
    ctx = StudyContext(name="x", out=tmp_path / "x", quiet=True)
    ctx.record(step=1, loss=0.5)
    assert '"loss": 0.5' in (tmp_path / "x" / "results.jsonl").read_text()
    with pytest.raises(ValueError, match="size must be one of"):
        StudyContext(name="x", out=tmp_path / "y", size="huge")


def test_summary_table_has_every_claim():
    md = summary_markdown("s", "Paper, arXiv:0", [Claim("a", "1", "2", "partly", "cpu"),
                                                   Claim("b", "3", "4", "reproduced")], "cpu", "quick", 3.0)
    assert "| claim | paper | ours | verdict | conditions |" in md
    assert "| a | 1 | 2 | **partly** | cpu |" in md and "| b | 3 | 4 | **reproduced** |" in md


def test_cli_list_runs(capsys):
    from attnzoo.cli import main

    assert main(["repro", "--list"]) == 0
