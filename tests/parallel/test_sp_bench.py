"""`attnzoo bench sp` at toy sizes (2 and 3 gloo processes): rows, bytes per rank equal to the
communication model's count, the report; the alpha-beta model itself; benchmarks/sp_nccl.py on 2
gloo processes at toy sizes (the script issue #21 runs on GPUs)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from sp_harness import run_ranks, values

from attnzoo.bench.sp import run_sp_bench
from attnzoo.parallel.comm_model import (
    bytes_per_rank,
    fit_alpha_beta,
    predict,
    scan_seconds,
    scan_terms,
)

TOY = {"op_shapes": {"tiny": {"T": 12, "H": 2, "D": 8}}, "repeats": 1, "rounds": 1, "comm_bytes": (2048, 32768),
       "comm_repeats": 3, "comm_schemes": (("ring", 1), ("allscan", 4), ("allgather", 1)),
       "variants": (("allscan", None), ("allscan", True), ("ring", False), ("allgather", None))}


def test_bench_sp_rows_bytes_and_report(tmp_path):
    rows = run_sp_bench((2, 3), out=tmp_path, plan=TOY, echo=lambda *_: None)
    ops = [r for r in rows if r["kind"] == "op"]
    assert {(r["op"], r["scheme"], r["P"]) for r in ops} == {
        (op, s, P) for op in ("gla", "delta") for s in ("allscan", "ring", "allgather") for P in (2, 3)}
    for r in ops:  # what the ranks really sent equals the model's count, per scheme and P
        want = bytes_per_rank(r["scheme"], r["P"], r["state_bytes"], map_bytes=r["map_bytes"])
        assert r["bytes_sent_max"] == pytest.approx(want, rel=1e-9), r
        assert r["seconds"] > 0
    allscan = {r["P"]: r["bytes_sent_max"] for r in ops if r["scheme"] == "allscan" and r["op"] == "gla"}
    gather = {r["P"]: r["bytes_sent_max"] for r in ops if r["scheme"] == "allgather" and r["op"] == "gla"}
    assert gather[3] > 1.9 * gather[2] and allscan[3] == 2 * allscan[2]  # P x volume vs one state each way
    comm = [r for r in rows if r["kind"] == "comm"]
    assert {(r["scheme"], r["P"], r["state_bytes"]) for r in comm} == {
        (s, P, M) for s in ("ring", "allscan", "allgather") for P in (2, 3) for M in (2048, 32768)}
    lines = (tmp_path / "sp.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["kind"] == "machine" and len(lines) == len(rows)
    md = (tmp_path / "sp.md").read_text()
    assert "alpha =" in md and "| 256 |" in md and (tmp_path / "sp.png").stat().st_size > 10_000


def test_alpha_beta_fit_recovers_the_parameters_and_the_model_scales_as_stated():
    alpha, beta = 50e-6, 2e-9
    rows = []
    for scheme, n in (("ring", 1), ("allscan", 4), ("allscan", 16)):
        for P in (2, 3, 4, 8):
            for M in (1e4, 1e6):
                t = scan_seconds(scheme, P, M, alpha=alpha, beta=beta, pieces=n)
                rows.append((*scan_terms(scheme, P, M, pieces=n), t))
    a, b = fit_alpha_beta(rows)
    assert a == pytest.approx(alpha, rel=1e-9) and b == pytest.approx(beta, rel=1e-9)
    M = 2**20
    assert bytes_per_rank("allscan", 256, M) == bytes_per_rank("allscan", 8, M) == 2 * M
    assert bytes_per_rank("allgather", 256, M) == pytest.approx(255 * 2 * M)
    # pipelining: with n pieces the bandwidth term shrinks n-fold, the latency term grows by n - 1 hops
    big = {n: predict("allscan", 64, 64 * M, pieces=n)["seconds"] for n in (1, 8)}
    assert big[8] < 0.2 * big[1]
    assert predict("allscan", 256, M, pieces=8)["seconds"] < predict("allgather", 256, M)["seconds"]
    with pytest.raises(ValueError, match="scheme must be"):
        scan_seconds("tree", 4, M, alpha=alpha, beta=beta)


def _nccl_script_toy(rank, world, out):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "sp_nccl.py"
    spec = importlib.util.spec_from_file_location("sp_nccl", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.run(mod.parse(["--toy", "--out", out, "--repeats", "1", "--million"]))


def test_nccl_script_runs_at_toy_sizes_on_gloo(tmp_path):
    rows = values(run_ranks(2, _nccl_script_toy, str(tmp_path), tmp=tmp_path, timeout=120))[0]
    checks = [r for r in rows if r["kind"] == "check"]
    assert {r["op"] for r in checks} == {"gla", "delta", "mixer:gated_deltanet"}
    assert all(r["ok"] and r["worst"] < 1e-4 for r in checks), checks  # float32 on the CPU
    assert {(r["kind"], r["scheme"]) for r in rows if r["kind"] in ("weak", "strong")} >= {
        ("weak", "allscan"), ("weak", "ring"), ("weak", "allgather"), ("strong", "allscan")}
    assert [r["P"] for r in rows if r["kind"] == "million"] == [2]
    assert (tmp_path / "sp_nccl.jsonl").exists()
