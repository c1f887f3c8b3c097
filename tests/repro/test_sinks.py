from _smoke import run_quick

from attnzoo.repro.sinks import CLAIMS, HIGH_LR, VARIANTS, count_spikes


def test_quick_study_writes_every_claim(tmp_path):
    claims, records = run_quick("sinks", tmp_path)
    assert [c.claim for c in claims] == list(CLAIMS)
    runs = {(r["variant"], r["lr_mult"]): r for r in records if "variant" in r}
    assert set(runs) == {(v, 1.0) for v in VARIANTS} | {("softmax", HIGH_LR), ("gated elementwise", HIGH_LR)}
    for r in runs.values():
        assert 0 < r["first_token_share"] < 1 and r["max_activation"] > 0 and 0 < r["bpb"] < 8.5


def test_count_spikes():
    flat = [2.0] * 50
    assert count_spikes(flat, after=0) == 0
    spiky = flat[:30] + [3.0] + flat[31:]
    assert count_spikes(spiky, after=0) == 1
    assert count_spikes(spiky, after=31) == 0  # inside the warmup: not counted
    falling = [5.0 - 0.05 * t for t in range(60)]
    assert count_spikes(falling, after=0) == 0


CFG = {"d_model": 8, "n_layers": 1, "n_heads": 2, "seq_len": 64, "batch": 2, "steps": 100, "lr": 1e-3}


class _Ctx:
    seed, device = 0, "cpu"


def _run(last, bpb_of, share=0.3, every=10):
    """A fake run stopped at `last` steps: checkpoints every 10 steps (+ the last), bpb_of(step)."""
    steps = list(range(every, last + 1, every)) + ([last] if last % every else [])
    cps = [{"step": s, "bpb": bpb_of(s), "first_token_share": share, "max_activation": 10.0,
            "max_activation_per_layer": [10.0]} for s in steps]
    return {"steps": last, "checkpoints": cps, "train_loss": [2.0] * last}


def test_variants_stopped_at_unequal_steps_are_compared_at_the_common_step():
    from attnzoo.repro.sinks import _claims, compare

    # softmax was cut at 79 steps; the gated runs trained longer and their *final* bpb looks better, but at
    # the common step 70 the gated elementwise model is worse: the verdict must follow step 70
    res = {("softmax", 1.0): _run(79, lambda s: 3.0 - s / 100),
           ("gated elementwise", 1.0): _run(100, lambda s: 3.1 - s / 100),
           ("gated headwise", 1.0): _run(95, lambda s: 3.1 - s / 100),
           ("softmax", HIGH_LR): _run(100, lambda s: 3.0), ("gated elementwise", HIGH_LR): _run(100, lambda s: 3.0)}
    picked = compare(res, CFG)
    assert {r["step"] for (v, m), r in picked.items() if m == 1.0} == {70}
    assert picked[("softmax", HIGH_LR)]["step"] == 100
    claims = _claims(_Ctx, CFG, picked)
    assert "bpb softmax 2.300, elementwise 2.400" in claims[2].ours and claims[2].verdict == "not reproduced"
    assert "compared at step 70 of 100 planned" in claims[2].conditions and "softmax x1 lr stopped at 79" \
        in claims[2].conditions
    assert "compared at step 100 (all 100 planned steps)" in claims[4].conditions


def test_too_few_common_steps_make_the_claims_untestable():
    from attnzoo.repro.sinks import _claims, compare

    res = {("softmax", 1.0): _run(40, lambda s: 3.0), ("gated elementwise", 1.0): _run(100, lambda s: 2.0),
           ("gated headwise", 1.0): _run(100, lambda s: 2.0), ("softmax", HIGH_LR): _run(100, lambda s: 3.0),
           ("gated elementwise", HIGH_LR): _run(100, lambda s: 3.0)}
    claims = _claims(_Ctx, CFG, compare(res, CFG))
    assert [c.verdict for c in claims[:4]] == ["untestable"] * 4
    assert "untestable: the variants share only 40 of 100 planned steps" in claims[2].conditions
    assert claims[4].verdict == "not reproduced"     # 10x lr ran to the end: decided (no spike in the baseline)


def test_a_baseline_at_byte_frequencies_makes_claims_1_to_4_untestable():
    from attnzoo.repro.sinks import _claims, compare

    res = {(v, m): _run(100, lambda s: 4.4) for v, m in [("softmax", 1.0), ("gated elementwise", 1.0),
                                                         ("gated headwise", 1.0), ("softmax", HIGH_LR),
                                                         ("gated elementwise", HIGH_LR)]}
    claims = _claims(_Ctx, {**CFG, "unigram_bits": 4.6}, compare(res, CFG))
    assert [c.verdict for c in claims[:4]] == ["untestable"] * 4 and "order-0 4.60" in claims[0].conditions
    assert claims[4].verdict == "not reproduced"
    assert _claims(_Ctx, {**CFG, "unigram_bits": 5.0}, compare(res, CFG))[2].verdict == "not reproduced"
