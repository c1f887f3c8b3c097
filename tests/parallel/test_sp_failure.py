"""A rank that raises makes the other ranks raise SequenceParallelError within the timeout, naming
themselves and the step that did not complete, instead of hanging: in the forward scan, in the
backward (reverse) scan, and in a mixer's conv halo; whether the failed rank exits or stays alive."""

from __future__ import annotations

import time

import pytest
import torch
from sp_harness import run_ranks

import attnzoo
from attnzoo.parallel import SequenceParallelError, flush_sends, sequence_parallel
from attnzoo.parallel import gated_linear_attention as sp_gla

TIMEOUT = 1.5
FAILING = 1


def _gla_inputs():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2, 4, requires_grad=True) for _ in range(3))
    g = torch.nn.functional.logsigmoid(torch.randn(1, 6, 2, 4)).requires_grad_()
    return q, k, v, g


def _scenario(rank, world, where, stay_alive):
    t0 = time.monotonic()
    try:
        if where == "halo":
            m = attnzoo.build("gated_deltanet", d_model=16, n_heads=2)
            if rank == FAILING:
                raise ValueError("planted failure before the mixer")
            with sequence_parallel(timeout=TIMEOUT):
                m(torch.randn(1, 5, 16)).sum().backward()
            return {"finished": True}
        q, k, v, g = _gla_inputs()
        if rank == FAILING and where == "forward":
            raise ValueError("planted failure before the op")
        o, _ = sp_gla(q, k, v, g, timeout=TIMEOUT, overlap=where == "backward")  # backward: the scan thread
        if rank == FAILING and where == "backward":
            raise ValueError("planted failure before the backward")
        o.sum().backward()
        flush_sends()  # the end of a step: the last rank's send to the failed rank surfaces here
        return {"finished": True}
    except SequenceParallelError as e:
        return {"raised": str(e), "elapsed": time.monotonic() - t0}
    except ValueError:
        if stay_alive:  # a rank stuck elsewhere: the others must not wait for it
            time.sleep(2.5 * TIMEOUT)
        raise


@pytest.mark.parametrize("where,stay_alive", [("forward", True), ("backward", False), ("halo", True)])
def test_failing_rank_makes_the_others_raise_within_the_timeout(tmp_path, where, stay_alive):
    start = time.monotonic()
    res = run_ranks(3, _scenario, where, stay_alive, tmp=tmp_path, timeout=40)
    assert time.monotonic() - start < 40
    assert res[FAILING].get("error") == "ValueError"
    others = [r for i, r in enumerate(res) if i != FAILING]
    assert all("ok" in r for r in others), others  # no rank hung or died
    raised = [r["ok"] for r in others]
    assert all("raised" in r for r in raised), raised  # each needs the failed rank, forward or backward
    for r in raised:
        assert "sequence parallel, rank" in r["raised"] and "of 3" in r["raised"]
        assert r["elapsed"] < 2.5 * TIMEOUT + 10
    if where == "backward":
        assert all("raised" in r["ok"] and "backward" in r["ok"]["raised"] for r in others)
