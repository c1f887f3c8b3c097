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
