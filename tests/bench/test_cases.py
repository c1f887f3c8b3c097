"""attnzoo.bench.cases.CaseLog: the case log of the one-call benchmark scripts."""

import json
import time

from attnzoo.bench.cases import CaseLog


def read(path):
    return json.loads(path.read_text())


def test_records_results_errors_and_rewrites_the_file_after_each_case(tmp_path):
    log = CaseLog(tmp_path / "out" / "r.json", {"machine": "m1"})
    assert log.run("a", lambda: {"ms": 1.5})["ms"] == 1.5
    assert [r["case"] for r in read(tmp_path / "out" / "r.json")["records"]] == ["a"]

    def broken():
        raise RuntimeError("boom")

    rec = log.run("b", broken)
    assert rec["error"] == "RuntimeError: boom" and "wall_s" not in rec
    log.run("c", lambda: {"x": 2})  # a failure loses nothing after it
    data = read(tmp_path / "out" / "r.json")
    assert data["machine"] == "m1" and [r["case"] for r in data["records"]] == ["a", "b", "c"]
    assert log.failed() == ["b"] and log.skipped() == []


def test_budget_skips_what_is_left_and_a_case_can_override_it(tmp_path):
    log = CaseLog(tmp_path / "r.json", {}, budget_s=10.0, t0=time.time() - 60)
    ran = []
    assert log.run("late", lambda: ran.append(1) or {})["skipped"] == "time budget spent"
    assert ran == [] and log.skipped() == ["late"]
    assert "wall_s" in log.run("given more", lambda: ran.append(2) or {}, budget_s=120.0)
    assert ran == [2]


def test_only_runs_the_selected_prefixes_and_records_nothing_else(tmp_path):
    log = CaseLog(tmp_path / "r.json", {}, only=("time", "mixer"))
    ran = []
    for name in ("check loop", "time T=1024", "mixer deltanet", "tune T=2048"):
        log.run(name, lambda name=name: ran.append(name) or {})
    assert ran == ["time T=1024", "mixer deltanet"]
    assert [r["case"] for r in read(tmp_path / "r.json")["records"]] == ran


def test_script_args_makes_the_folder_parses_only_and_needs_cuda_or_smoke(tmp_path):
    import pytest
    import torch

    from attnzoo.bench.cases import script_args

    a = script_args("doc", budget=12.0, only=True, argv=[str(tmp_path / "o"), "--smoke", "--only", "time,mixer"])
    assert (tmp_path / "o").is_dir() and a.budget == 12.0 and a.only == ("time", "mixer") and a.smoke
    assert not hasattr(script_args("doc", argv=[str(tmp_path / "p"), "--smoke"]), "budget")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs CUDA"):
            script_args("doc", argv=[str(tmp_path / "q")])


def test_summary_table_shows_the_chosen_keys_errors_and_the_worst_relative_error(tmp_path):
    import torch

    from attnzoo.bench.cases import cuda_peak_mb, rel_err

    log = CaseLog(tmp_path / "x.json", {}, budget_s=None)
    log.run("a", lambda: {"ok": True, "y_rel": 1e-3, "dx_rel": 4e-3, "ms": 2.0, "other": 5})
    log.run("b", lambda: 1 / 0)
    md = log.summary(("ok", "ms"))
    assert md.splitlines()[:2] == ["| case | result |", "|---|---|"]
    assert "| a | ok True; ms 2; worst rel 4.00e-03 |" in md and "other" not in md
    assert "| b | error ZeroDivisionError" in md
    assert rel_err(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == 0.0
    assert abs(rel_err(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 0.0]) + torch.tensor([3.0, 0.0])) - 4 / 3) < 1e-9
    if not torch.cuda.is_available():
        assert cuda_peak_mb(lambda: None) is None
