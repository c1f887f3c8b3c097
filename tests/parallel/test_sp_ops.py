"""Sequence-parallel gated linear attention and delta rule on 2, 3 and 4 gloo processes equal the
single-process op: outputs, the state at the end of every shard, and every gradient (float64 and
float32), for All-Scan, the ring and the all-gather, odd and unequal shard lengths, an initial
state, and a padded stretch covering whole shards. One spawn per world size runs every case."""

from __future__ import annotations

import pytest
import torch
from sp_harness import rel_err, run_ranks, values
from sp_op_cases import CASES, run_all, truth

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}  # relative, against a float64 truth


@pytest.fixture(scope="module", params=[2, 3, 4])
def world_results(request, tmp_path_factory):
    world = request.param
    res = run_ranks(world, run_all, list(CASES), tmp=tmp_path_factory.mktemp(f"sp_ops_{world}"), timeout=240)
    return world, values(res)


@pytest.mark.parametrize("name", list(CASES))
def test_sequence_parallel_op_matches_single_process(world_results, name):
    world, per_rank = world_results
    tol = TOL[CASES[name]["dtype"]]
    o_true, S_true, g_true = truth(name, world)
    got = [r[name] for r in per_rank]
    assert rel_err(torch.cat([g["o"] for g in got], 1), o_true) < tol
    for r in range(world):  # rank r returns the state at the end of its shard
        assert rel_err(got[r]["S"], S_true[r]) < tol, f"state of rank {r}"
    for n, want in g_true.items():
        if n in ("g_gamma", "initial_state"):  # shared by the ranks: partial gradients that sum
            have = sum(g["grads"][n] for g in got)
        else:
            have = torch.cat([g["grads"][n] for g in got], 1)
        assert rel_err(have, want) < tol, f"gradient of {n}"
    if "initial_state" in g_true and world > 1:  # read on rank 0 only
        assert all(float(g["grads"]["initial_state"].abs().max()) == 0.0 for g in got[1:])
