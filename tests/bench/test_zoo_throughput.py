"""`attnzoo bench zoo-throughput` on the CPU at a toy size: both paths time the same case, the table has the ratio."""

import json

from attnzoo.cli import main


def test_throughput_bench_writes_rows_and_ratio(tmp_path, capsys):
    out = tmp_path / "zt"
    assert main(["bench", "zoo-throughput", "--mixers", "softmax", "--d-models", "16", "--seq-lens", "32",
                 "--steps", "2", "--warmup", "1", "--group-size", "2", "--workers", "2", "--batch", "4",
                 "--paths", "process,group,group_procs", "--group-workers", "2", "--device", "cpu",
                 "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "throughput.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == ["process", "group_procs", "group"]
    assert rows[1]["workers"] == 2 and rows[1]["group_size"] == 2
    assert all(r["model_steps_per_s"] > 0 and "error" not in r for r in rows), rows
    md = (out / "throughput.md").read_text()
    assert "| softmax | 16 | 32 |" in md and "x |" in md and "group_procs steps/s" in md


def test_unknown_path_refused(tmp_path):
    import pytest

    from attnzoo.bench.zoo.throughput import run_throughput

    with pytest.raises(ValueError, match="paths must be among"):
        run_throughput(mixers=["softmax"], paths=("nope",), out=str(tmp_path))


def test_table_columns_match_with_and_without_the_process_path(tmp_path):
    from attnzoo.bench.zoo.throughput import write_throughput_table

    row = lambda path, v: {"mixer": "softmax", "d_model": 64, "seq_len": 64, "path": path, "model_steps_per_s": v}  # noqa: E731
    for rows, ratio in (([row("process", 100.0), row("group_graph", 640.0)], "6.4x"),
                        ([row("group_graph", 856.6), row("group_graph_compiled", 1041.3)], None)):
        lines = write_throughput_table(rows, str(tmp_path)).splitlines()
        assert all(line.count("|") == lines[0].count("|") for line in lines), lines
        assert (ratio in lines[2]) if ratio else "/process" not in lines[0]
