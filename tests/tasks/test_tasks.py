import math

import numpy as np
import pytest
import torch

from attnzoo.tasks import token_task
from attnzoo.tasks.ar_forecast import (
    generate_ar_forecast,
    hankel_samples,
    is_stationary,
    ols_ar_predict,
    sample_stationary_coefficients,
    simulate_ar,
)
from attnzoo.tasks.bytes import StdlibBytes, bits_per_byte, is_validation
from attnzoo.tasks.icl_regression import baseline_mse, generate_icl_regression, ridge_predict
from attnzoo.tasks.passkey import generate_passkey


# ---- passkey ---------------------------------------------------------------------------------
@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_passkey_hides_the_key_at_the_depth_and_asks_for_it(depth):
    x, y = generate_passkey(4, seq_len=300, num_digits=5, depth=depth, seed=1)
    assert x.shape == y.shape == (4, 300)
    for row_x, row_y in zip(x, y):
        text = bytes(row_x.tolist()).decode()
        pos = text.index("The pass key is ")
        key = text[pos + 16: pos + 21]
        assert key.isdigit() and text.endswith("What is the pass key? The pass key is " + key[:4])
        scored = (row_y != -100).nonzero()[:, 0]
        assert scored.tolist() == list(range(295, 300))
        assert bytes(row_y[scored].tolist()).decode() == key
        free = 300 + 1 - len("The pass key is 00000. Remember it. 00000 is the pass key. ") - 38 - 5
        assert pos == round(depth * free)


def test_passkey_errors():
    with pytest.raises(ValueError, match="seq_len must be >="):
        generate_passkey(2, seq_len=50)
    with pytest.raises(ValueError, match="depth must be in"):
        generate_passkey(2, seq_len=200, depth=1.5)


# ---- ICL regression --------------------------------------------------------------------------
def test_icl_prompt_layout_and_ridge_closed_form():
    z, yq = generate_icl_regression(64, dim=4, num_pairs=10, noise_std=0.2, seed=0, dtype=torch.float64)
    assert z.shape == (64, 11, 5) and yq.shape == (64,)
    assert torch.all(z[:, -1, -1] == 0)
    lam = 0.3
    X, y = z[0, :-1, :-1], z[0, :-1, -1]
    beta = np.linalg.solve(X.T.numpy() @ X.numpy() + lam * np.eye(4), X.T.numpy() @ y.numpy())
    assert ridge_predict(z, ridge=lam)[0].item() == pytest.approx(float(z[0, -1, :-1].numpy() @ beta), rel=1e-10)


def test_icl_ols_is_exact_without_noise_and_ridge_beats_ols_with_few_pairs():
    z, yq = generate_icl_regression(200, dim=4, num_pairs=8, noise_std=0.0, seed=1, dtype=torch.float64)
    assert baseline_mse(z, yq, ridge=0.0) < 1e-20
    z, yq = generate_icl_regression(4000, dim=8, num_pairs=8, noise_std=0.5, seed=2, dtype=torch.float64)
    assert baseline_mse(z, yq, ridge=0.25) < 0.8 * baseline_mse(z, yq, ridge=0.0)


# ---- AR(p) -----------------------------------------------------------------------------------
def test_ar_coefficients_are_stationary_and_in_range():
    rng = np.random.default_rng(0)
    for p in (1, 3, 7):
        phi = sample_stationary_coefficients(p, rng)
        assert phi.shape == (p,) and np.all(np.abs(phi) < 0.9) and is_stationary(phi)
    assert not is_stationary(np.array([1.1]))
    assert not is_stationary(np.array([0.5, 0.6]))      # root inside the unit circle
    assert is_stationary(np.array([0.5, 0.3]))


def test_hankel_layout():
    x = np.arange(10, dtype=np.float64)
    H, t = hankel_samples(x, order=2, history=3)
    assert H.shape == (10 - 6 + 1, 3, 4)
    np.testing.assert_array_equal(H[0].numpy(), [[0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 0]])
    assert t[0] == 5 and t[-1] == 9


def test_ols_ar_recovers_noise_floor_with_long_history():
    rng = np.random.default_rng(3)
    phi = sample_stationary_coefficients(3, rng)
    x = simulate_ar(phi, 1200, noise_std=0.1, rng=rng)
    H, y = hankel_samples(x, order=3, history=400)
    mse = float(((ols_ar_predict(H) - y) ** 2).mean())
    assert 0.7 * 0.01 < mse < 1.3 * 0.01
    H, y, _ = generate_ar_forecast(order=7, history=9, series_length=400, seed=0)
    assert H.shape[1:] == (8, 10)


# ---- stdlib bytes ----------------------------------------------------------------------------
def test_stdlib_bytes_split_is_deterministic_and_disjoint():
    a = StdlibBytes(max_bytes=400_000)
    b = StdlibBytes(max_bytes=400_000)
    assert a.files == b.files
    assert set(a.files["train"]).isdisjoint(a.files["validation"])
    assert all(is_validation(f, 10) for f in a.files["validation"])
    x, y = a.windows("validation", seq_len=32, num=8, seed=0)
    assert x.shape == y.shape == (8, 32) and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < 256
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="split must be"):
        a.windows("test", seq_len=8, num=1)


def test_token_task_interface():
    t = token_task("passkey", seq_len=128, num_train=4, num_test=2)
    assert t.vocab_size == 256 and t.train[0].shape == (4, 128)
    with pytest.raises(ValueError, match="task must be one of"):
        token_task("nope", seq_len=8, num_train=1, num_test=1)
