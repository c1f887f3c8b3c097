"""hybrid-ratio: the verdict rules on planted numbers, the layer patterns, equal steps, and the quick smoke run."""

import pytest

from attnzoo.models.lm import parse_pattern
from attnzoo.repro import hybrid_ratio as hr
from attnzoo.repro._lm import equal_steps, hybrid_pattern
from _smoke import run_quick

P = dict(hr.SIZES["medium"], ratios=("pure", "3:1", "1:1"), steps_each=10, unigram_bits=5.0)


def _res(hard, bpb):
    """res from {(variant, ratio): hard recall} and {(variant, ratio): bpb}."""
    return {k: {"recall_easy": 0.0, "recall_hard": hard[k], "bpb": bpb.get(k, 3.0)} for k in hard}


def test_patterns_put_one_softmax_at_the_end_of_each_unit():
    assert parse_pattern(hybrid_pattern("gla", 3), 8) == (["gla"] * 3 + ["softmax"]) * 2
    assert parse_pattern(hybrid_pattern("gla", 7), 8) == ["gla"] * 7 + ["softmax"]
    assert hybrid_pattern("gla", None) == "gla" and hybrid_pattern("gla", 0) == "softmax"


def test_equal_steps_fit_the_budget():
    assert equal_steps([0.1, 0.3], budget_seconds=10, most=1000) == 25
    assert equal_steps([0.1], budget_seconds=1000, most=50) == 50
    assert equal_steps([10.0], budget_seconds=1, most=50, least=3) == 3
    with pytest.raises(ValueError, match="positive budget"):
        equal_steps([0.1], budget_seconds=0, most=5)


def test_rules_reproduced_when_recall_jumps_and_bpb_is_flat():
    hard = {("softmax", "softmax"): 0.9}
    for v, pure, three in (("gla", 0.1, 0.95), ("gated_deltanet", 0.3, 0.85)):
        hard.update({(v, "pure"): pure, (v, "3:1"): three, (v, "1:1"): 0.9})
    c = hr.claims(P, _res(hard, {("gla", "pure"): 3.05}), "medium")
    assert [x.verdict for x in c] == ["reproduced", "reproduced", "reproduced", "reproduced"]


def test_rules_not_reproduced_and_untestable_baseline():
    hard = {("softmax", "softmax"): 0.3}
    for v in ("gla", "gated_deltanet"):
        hard.update({(v, "pure"): 0.2, (v, "3:1"): 0.25, (v, "1:1"): 0.3})
    bpb = {("gla", "pure"): 4.0}                          # 4.0 vs 3.0: not flat for gla
    c = hr.claims(P, _res(hard, bpb), "medium")
    assert c[0].verdict == "partly"                       # one of two variants flat
    c = hr.claims({**P, "unigram_bits": 3.2}, _res(hard, bpb), "medium")
    assert c[0].verdict == "untestable" and "untestable" in c[0].conditions   # softmax 3.0 > 3.2 - 0.5
    assert c[1].verdict == "untestable" and "did not learn MQAR" in c[1].conditions
    assert c[2].verdict == "untestable" and "did not learn MQAR" in c[2].conditions
    assert c[3].verdict == "untestable"
    hard[("softmax", "softmax")] = 0.6
    assert hr.claims(P, _res(hard, bpb), "medium")[3].verdict == "not reproduced"   # gla best in both (ties: first)


def test_jump_and_argmax_rules_untestable_when_softmax_did_not_learn_mqar():
    hard = {(v, r): x for v, xs in (("gla", (0.1, 0.6, 0.7)), ("gated_deltanet", (0.2, 0.5, 0.7)))
            for r, x in zip(("pure", "3:1", "1:1"), xs)}
    learned = hr.claims(P, _res({**hard, ("softmax", "softmax"): 0.6}, {}), "medium")
    assert [learned[1].verdict, learned[3].verdict] == ["reproduced", "reproduced"]
    assert not any("untestable" in c.conditions for c in learned)
    chance = hr.claims(P, _res({**hard, ("softmax", "softmax"): 0.4}, {}), "medium")
    for c in (chance[1], chance[2], chance[3]):
        assert c.verdict == "untestable" and "untestable" in c.conditions
    assert chance[0].verdict != "untestable"              # the bytes control learned: the LM claim is decided


def test_a_run_cut_by_the_safety_cap_makes_its_task_untestable():
    hard = {(v, r): x for v, xs in (("gla", (0.1, 0.6, 0.7)), ("gated_deltanet", (0.2, 0.5, 0.7)))
            for r, x in zip(("pure", "3:1", "1:1"), xs)}
    res = _res({**hard, ("softmax", "softmax"): 0.9}, {})
    res[("gla", "3:1")]["mqar_steps"] = 7                 # planned 10 (P's steps_each)
    c = hr.claims(P, res, "medium")
    assert [x.verdict for x in c[1:]] == ["untestable"] * 3
    assert "mqar runs stopped before 10 steps (gla/3:1 at 7)" in c[1].conditions
    assert c[0].verdict == "reproduced"                   # the bytes runs all trained their 10 steps


def test_quick_smoke(tmp_path):
    claims, rows = run_quick("hybrid-ratio", tmp_path)
    assert [c.claim for c in claims] == list(hr.CLAIMS)
    runs = [r for r in rows if "pattern" in r and r.get("kind") != "run"]
    assert len(runs) == 5 and len({r["mqar_steps"] for r in runs} | {r["bytes_steps"] for r in runs}) == 1
    finished = [r for r in rows if r.get("kind") == "run"]     # each run on record as it finished, before the stacks
    assert sorted((r["pattern"], r["task"]) for r in finished) == sorted((r["pattern"], t) for r in runs
                                                                         for t in ("mqar", "bytes"))
    assert rows.index(finished[-1]) < rows.index(runs[0])


def test_full_size_plan_is_fixed_and_names_the_claim_3_mixers():
    p = hr.SIZES["full"]
    stacks = hr._stacks(p)
    assert len(stacks) == 21 and ("gated_deltanet", "3:1", "gated_deltanet*3,softmax") in stacks
    assert set(p["variants"]) == {"gla", "hgrn2", "deltanet", "gated_deltanet", "retnet"}  # the matrix
    assert p["ratios"] == ("pure", "7:1", "3:1", "1:1") and p["min_steps"] == p["steps"] == 3000
    # however slow the probes, the plan stays 3000 MQAR steps (and a third of it on bytes)
    assert equal_steps([1.0] * 14, budget_seconds=p["budget_seconds"], most=p["steps"], least=p["min_steps"]) == 3000
    assert round(3000 * p["bytes_share"]) == 1000


def test_resume_runs_only_the_runs_not_on_record(tmp_path, monkeypatch):
    import json

    from attnzoo.repro.base import run_study

    run_quick("hybrid-ratio", tmp_path)
    path = tmp_path / "hybrid-ratio" / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    finished = [r for r in rows if r.get("kind") == "run"]
    cut = [r for r in rows if "claim" not in r and r.get("kind") != "run" and "pattern" not in r]   # the plan
    path.write_text("".join(json.dumps(r) + "\n" for r in cut + finished[:6]))   # a call cut after 6 runs
    calls = []
    real = hr.train_run
    monkeypatch.setattr(hr, "train_run", lambda job: calls.append((job["pattern"], job["task"])) or real(job))
    claims = run_study("hybrid-ratio", out=tmp_path, size="quick", quiet=True, resume=True)
    assert sorted(calls) == sorted((r["pattern"], r["task"]) for r in finished[6:])
    again = [json.loads(line) for line in path.read_text().splitlines()]
    stacks = {r["pattern"]: r for r in again if "pattern" in r and r.get("kind") != "run"}
    first = {r["pattern"]: r for r in rows if "pattern" in r and r.get("kind") != "run"}
    for r in finished[:6]:   # the kept runs' numbers are the ones on record, not new ones
        key = "recall_hard" if r["task"] == "mqar" else "bpb"
        assert stacks[r["pattern"]][key] == first[r["pattern"]][key]
    assert sum("claim" in r for r in again) == len(claims)


def test_full_size_mqar_models_use_zoologys_recipe_and_resume_checks_it(tmp_path, monkeypatch):
    import json

    from attnzoo.repro.base import run_study

    full = hr.SIZES["full"]
    small = dict(full, d_model=16, n_heads=2, n_layers=2, vocab=32)
    mq, by = hr._build(small, "softmax", "mqar", 0), hr._build(small, "softmax", "bytes", 0)
    assert all(b.mlp is None for b in mq.blocks) and all(b.mlp is not None for b in by.blocks)
    assert mq.init_config.get("init") == "gpt2" and by.init_config.get("init", "default") == "default"
    assert hr.recipe_label(full, "mqar") == "mlp 0, init gpt2" and hr.recipe_label(full, "bytes") == hr.OLD_RECIPE
    # a run recorded under another recipe is trained again on --resume; one under the current recipe is kept
    monkeypatch.setitem(hr.SIZES, "quick", dict(hr.SIZES["quick"], mqar_mlp_ratio=0.0, mqar_init="gpt2"))
    run_quick("hybrid-ratio", tmp_path)
    path = tmp_path / "hybrid-ratio" / "results.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    runs = [r for r in rows if r.get("kind") == "run"]
    assert {r["recipe"] for r in runs if r["task"] == "mqar"} == {"mlp 0, init gpt2"}
    plan = [r for r in rows if "claim" not in r and r.get("kind") != "run" and "pattern" not in r]
    old = [{k: v for k, v in r.items() if k != "recipe"} for r in runs]      # as recorded before the field
    path.write_text("".join(json.dumps(r) + "\n" for r in plan + old))
    calls = []
    real = hr.train_run
    monkeypatch.setattr(hr, "train_run", lambda job: calls.append((job["pattern"], job["task"])) or real(job))
    run_study("hybrid-ratio", out=tmp_path, size="quick", quiet=True, resume=True)
    assert sorted(calls) == sorted((r["pattern"], "mqar") for r in runs if r["task"] == "mqar")
