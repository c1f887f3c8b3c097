import torch
from _smoke import run_quick

from attnzoo.repro.degeneration import CLAIMS, SEP, build, greedy, quarters, reversal_data


def test_quick_study_writes_every_claim(tmp_path):
    claims, records = run_quick("degeneration", tmp_path)
    assert [c.claim for c in claims] == list(CLAIMS)
    runs = {r["model"]: r for r in records if "model" in r}
    assert set(runs) == {"decoder-only", "partial attention"}
    for r in runs.values():
        assert len(r["mass"]) == len(r["accuracy"]) == len(r["share"]) == r["S"]
        assert abs(r["mass"][0] - 1.0) < 1e-5 or r["model"] == "partial attention"  # step 1 sees only the source


def test_reversal_data_and_greedy():
    x, y = reversal_data(3, 5, seed=0)
    assert x.shape == (3, 10) and bool((x[:, 5] == SEP).all())
    assert torch.equal(y[:, 5:], x[:, :5].flip(1)) and bool((y[:, :5] == -100).all())
    cfg = {"S": 5, "d_model": 16, "n_layers": 1, "n_heads": 2}
    lm = build("decoder-only", cfg).eval()
    prompt = x[:, :6]
    assert torch.equal(greedy(lm, prompt, 5), lm.generate(prompt, 5, temperature=0)[:, 6:])
    assert build("partial attention", cfg).blocks[0].mixer.prefix_len == 6
    assert quarters([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]) == (1.5, 7.5)


def test_untrained_or_unequal_models_make_the_claims_untestable():
    from attnzoo.repro.degeneration import _claims

    class Ctx:
        seed, device = 0, "cpu"

    S = 8
    cfg = {"S": S, "d_model": 16, "n_layers": 1, "n_heads": 2, "steps": 100, "batch": 4, "lr": 1e-3}
    fading = [1.0 - 0.1 * i for i in range(S)]

    def model(acc, steps=100, share=fading):
        return {"mass": fading, "share": share, "accuracy": [1.0] * 4 + [0.5] * 4, "teacher_forced_accuracy": acc,
                "steps": steps}

    res = {"decoder-only": model(0.9), "partial attention": model(0.95, share=[0.9] * S)}
    assert [c.verdict for c in _claims(Ctx, cfg, res)] == ["reproduced", "reproduced", "partly"]
    res["decoder-only"] = model(0.1)                        # at chance (1/16 = 0.06): learned nothing
    c = _claims(Ctx, cfg, res)
    assert [x.verdict for x in c] == ["untestable"] * 3 and "did not learn the reversal" in c[0].conditions
    res = {"decoder-only": model(0.9, steps=60), "partial attention": model(0.95, share=[0.9] * S)}
    c = _claims(Ctx, cfg, res)
    assert c[0].verdict == "reproduced" and [x.verdict for x in c[1:]] == ["untestable"] * 2
    assert "ended at unequal steps" in c[1].conditions
