import numpy as np
import torch
from _smoke import run_quick

from attnzoo.repro.ar_forecast import CLAIMS, ROLLOUT, global_ols, rollout, windows_to_tokens
from attnzoo.tasks.ar_forecast import hankel_samples, sample_stationary_coefficients, simulate_ar


def test_quick_study_writes_every_claim(tmp_path):
    claims, records = run_quick("ar-forecast", tmp_path)
    assert [c.claim for c in claims] == list(CLAIMS)
    tf = [r for r in records if "lsa" in r]
    assert tf and all(r["ols"] < r["ols_in_context"] for r in tf if r["history"] == 9)  # n=9, p=7: 1 dof per fit
    steps = [r["rollout_step"] for r in records if "rollout_step" in r]
    assert steps == list(range(1, ROLLOUT + 1))


def test_tokens_are_the_hankel_columns_and_ols_recovers_phi():
    rng = np.random.default_rng(0)
    phi = sample_stationary_coefficients(3, rng)
    x = simulate_ar(phi, 20000, noise_std=0.05, rng=rng)
    H, _ = hankel_samples(x[:13], order=3, history=9)
    tokens = windows_to_tokens(torch.from_numpy(x[None, :12]), 3)
    torch.testing.assert_close(tokens, H.transpose(1, 2))
    assert np.abs(global_ols(x, 3) - phi).max() < 0.05


def test_rollout_feeds_predictions_back():
    values = torch.tensor([[1.0, 2.0, 3.0]])
    path = rollout(lambda v: v[:, -1] + v[:, -2], values, 3)   # Fibonacci-like
    torch.testing.assert_close(path, torch.tensor([[5.0, 8.0, 13.0]]))
