"""ssa-align: the verdict rules on planted numbers, mode switching, and the quick smoke run."""

from attnzoo.repro import ssa_align as sa
from attnzoo.repro._lm import small_lm
from _smoke import run_quick

P = dict(sa.SIZES["medium"], steps_each=10)


def _row(full, **sparse):
    return {"bpb_full": full, **{f"bpb_sparse_k{k[1:]}": v for k, v in sparse.items()}}


def test_rules_reproduced():
    res = {"full-only": _row(2.00, k1=2.6, k2=2.4, k4=2.2, k8=2.1),
           "sparse-only": _row(2.10, k1=2.5, k2=2.3, k4=2.12, k8=2.11),
           "SSA": _row(1.99, k1=2.3, k2=2.1, k4=2.0, k8=1.99)}
    assert [c.verdict for c in sa.claims(P, res, "medium")] == ["reproduced"] * 3


def test_rules_not_reproduced():
    res = {"full-only": _row(2.00, k1=2.1, k2=2.05, k4=2.01, k8=2.0),
           "sparse-only": _row(2.10, k1=2.2, k2=2.15, k4=2.1, k8=2.1),
           "SSA": _row(2.20, k1=2.5, k2=2.4, k4=2.3, k8=2.2)}
    c = sa.claims(P, res, "medium")
    assert c[0].verdict == "not reproduced"   # SSA gap 0.10 > 0.05 and > half of full-only's 0.01
    assert c[1].verdict == "not reproduced" and c[2].verdict == "not reproduced"


def test_set_mode_reaches_every_layer():
    m = small_lm("block_sparse", vocab=256, d_model=32, n_layers=2, n_heads=4,
                 mixer_kwargs={"block_sparse": {"n_kv_heads": 2, "block_size": 4, "top_k": 2}})
    sa.set_mode(m, "mixed", 3)
    assert all(b.mixer.mode == "mixed" and b.mixer.top_k == 3 for b in m.blocks)


def test_quick_smoke(tmp_path):
    claims, rows = run_quick("ssa-align", tmp_path)
    assert [c.claim for c in claims] == list(sa.CLAIMS)
    runs = [r for r in rows if "train_mode" in r]
    assert sorted(r["train_mode"] for r in runs) == ["full", "mixed", "sparse"]
    assert len({r["steps"] for r in runs}) == 1


def test_untestable_when_a_model_stopped_early_or_the_control_did_not_learn():
    good = {"full-only": _row(2.00, k1=2.6, k2=2.4, k4=2.2, k8=2.1),
            "sparse-only": _row(2.10, k1=2.5, k2=2.3, k4=2.12, k8=2.11),
            "SSA": _row(1.99, k1=2.3, k2=2.1, k4=2.0, k8=1.99)}
    learned = {**P, "unigram_bits": 4.5}
    assert [c.verdict for c in sa.claims(learned, good, "medium")] == ["reproduced"] * 3
    cut = {**good, "SSA": {**good["SSA"], "steps": 6}}             # the plan (P) is 10 steps
    c = sa.claims(learned, cut, "medium")
    assert [x.verdict for x in c] == ["untestable"] * 3 and "stopped SSA at 6 of 10 steps" in c[0].conditions
    c = sa.claims({**P, "unigram_bits": 2.3}, good, "medium")       # full-only 2.00 > 2.3 - 0.5
    assert [x.verdict for x in c] == ["untestable"] * 3 and "learned little past byte" in c[2].conditions
