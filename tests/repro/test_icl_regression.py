import torch
from _smoke import run_quick

from attnzoo.repro.icl_regression import CLAIMS, best_gd_eta, gd_predict, kq_structure, ov_structure
from attnzoo.tasks.icl_regression import generate_icl_regression


def test_quick_study_writes_every_claim(tmp_path):
    claims, records = run_quick("icl-regression", tmp_path)
    assert [c.claim for c in claims] == list(CLAIMS)
    mse = {(r["model"], r["L_test"]): r["mse"] for r in records if "mse" in r}
    L = 16
    # the references are ordered as they must be: Bayes ridge < best one-step GD < predicting 0
    assert mse[("ridge", L)] < mse[("gd", L)] < mse[("zero", L)]
    assert mse[("softmax H=4", L)] < 0.5 * mse[("zero", L)]  # the model learned


def test_gd_baseline_and_structure_metrics():
    z, y = generate_icl_regression(4000, dim=3, num_pairs=200, noise_std=0.0, seed=0)
    eta = best_gd_eta(z, y)
    assert abs(eta - 1.0) < 0.1  # with L >> d, (1/L) Σ y x ≈ β, so η* ≈ 1
    assert float(((gd_predict(z, eta) - y) ** 2).mean()) < 0.1 * float((y ** 2).mean())
    kq = torch.zeros(2, 4, 4)
    kq[0, :3, :3] = torch.eye(3)
    kq[1, :3, :3] = -2 * torch.eye(3)
    s = kq_structure(kq, torch.ones(2))
    assert s["x_block_share"] == 1.0 and s["offdiag_share"] == 0.0 and s["diag_spread"] == 0.0
    kq[0, 0, 1] = 1.0
    assert kq_structure(kq, torch.tensor([1.0, 0.0]))["offdiag_share"] > 0.4
    ov = torch.zeros(2, 4, 4)
    ov[:, -1, -1] = torch.tensor([1.0, -1.0])
    o = ov_structure(ov)
    assert o["last_entry_share"] == 1.0 and o["head_cancellation"] == 0.0
    ov[0, -1, 0] = 1.0
    assert ov_structure(ov)["last_entry_share"] < 0.9
