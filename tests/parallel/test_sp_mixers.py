"""Every linear mixer, and a hybrid LanguageModel with softmax and sliding-window layers, run
sequence-parallel on 2, 3 and 4 gloo processes (one spawn per world size) equal the same module
in one process, forward and backward, with and without a padded batch."""

from __future__ import annotations

import pytest
import torch
from sp_harness import rel_err, run_ranks, values
from sp_mixer_cases import LINEAR_MIXERS, run_on_rank, truth

TOL = 1e-9  # float64
CASES = {
    3: [(n, p) for n in (*LINEAR_MIXERS, "hybrid") for p in (False, True)],
    2: [("gla", False), ("gated_deltanet", True), ("mamba2", True), ("hybrid", True)],
    4: [("gla", True), ("gated_deltanet", True), ("rwkv6", True), ("lawcat", False), ("hybrid", False)],
}
PARAMS = [(w, n, p) for w, cases in CASES.items() for n, p in cases]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cache = {}

    def get(world):
        if world not in cache:
            tmp = tmp_path_factory.mktemp(f"sp_mixers_{world}")
            cache[world] = values(run_ranks(world, run_on_rank, CASES[world], tmp=tmp, timeout=240))
        return cache[world]

    return get


@pytest.mark.parametrize("world,name,padded", PARAMS, ids=[f"P{w}-{n}-{'pad' if p else 'full'}" for w, n, p in PARAMS])
def test_mixer_sequence_parallel_matches_single_process(results, world, name, padded):
    per_rank = [r[(name, padded)] for r in results(world)]
    want = truth(name, padded)
    real = torch.ones(want["y"].shape[:2], dtype=torch.bool) if want["mask"] is None else want["mask"]
    assert rel_err(torch.cat([r["y"] for r in per_rank], 1)[real], want["y"][real]) < TOL  # padded: anything
    if want["dx"] is not None:
        assert rel_err(torch.cat([r["dx"] for r in per_rank], 1), want["dx"]) < TOL
    for n, g in want["params"].items():
        if float(g.norm()) > 0:
            assert rel_err(sum(r["params"][n] for r in per_rank), g) < TOL, f"gradient of {n}"
    for f, s in want["state"].items():  # the last rank holds the sequence's final state
        assert rel_err(per_rank[-1]["state"][f], s) < TOL, f"final state.{f}"


def test_unsupported_mixer_is_refused():
    import attnzoo
    from attnzoo.parallel import sequence_parallel

    m = attnzoo.build("mamba", d_model=16)
    with pytest.raises(ValueError, match="no sequence-parallel form for mixer"):
        with sequence_parallel(model=m):
            pass
