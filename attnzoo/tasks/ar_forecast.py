"""Stationary AR(p) series, Hankel-style windows, and the OLS AR(p) baseline.

Zhou, Wang, Goel, Zhang (2025), "Why Do Transformers Fail to Forecast Time Series In-Context?",
arXiv:2510.09776 (AR(p) data, Hankel embedding, OLS baseline).

    x_t = Σ_{i=1..p} φ_i x_{t-i} + ε_t,   ε_t ~ N(0, σ²)

φ_i ~ U(-0.9, 0.9), resampled until every root of 1 - φ_1 z - ... - φ_p z^p lies outside the
unit circle (stationarity). A sample has a history of n+p values; its Hankel matrix
H [p+1, n+1] has columns (x_{s-p}, .., x_{s-1}, x_s): n full columns, then the query column
(x_{t-p+1..t}, 0) whose zeroed slot is the target x_{t+1}.

Baseline: OLS fit of φ on the n full columns of each sample, prediction φ̂ · (last p lags).
"""

from __future__ import annotations

import numpy as np
import torch


def sample_stationary_coefficients(order: int, rng: np.random.Generator, max_tries: int = 100000) -> np.ndarray:
    """φ [p] with φ_i ~ U(-0.9, 0.9), resampled until all roots are outside the unit circle."""
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    for _ in range(max_tries):
        phi = rng.uniform(-0.9, 0.9, size=order)
        if is_stationary(phi):
            return phi
    raise ValueError(f"no stationary AR({order}) coefficients found in {max_tries} draws")


def is_stationary(phi: np.ndarray) -> bool:
    # 1 - φ1 z - ... - φp z^p; np.roots takes the highest degree first
    coeffs = np.concatenate([-np.asarray(phi, dtype=np.float64)[::-1], [1.0]])
    return bool(np.all(np.abs(np.roots(coeffs)) > 1.0))


def simulate_ar(phi: np.ndarray, length: int, *, noise_std: float = 0.05, burn_in: int = 500,
                rng: np.random.Generator) -> np.ndarray:
    """One series [length] (burn-in dropped so it starts near the stationary distribution)."""
    p = len(phi)
    total = length + burn_in + p
    eps = rng.normal(0.0, noise_std, size=total)
    x = np.zeros(total)
    for t in range(p, total):
        x[t] = phi @ x[t - p:t][::-1] + eps[t]
    return x[-length:]


def hankel_samples(series: np.ndarray, *, order: int, history: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window of the series -> (H [N, p+1, n+1], target [N]); n = history columns."""
    p, n = order, history
    if n < 1:
        raise ValueError(f"history must be >= 1, got {history}")
    w = p + 1
    span = n + p + 1                      # values a sample looks at, target included
    if len(series) < span:
        raise ValueError(f"series of length {len(series)} is shorter than history + order + 1 = {span}")
    cols = np.lib.stride_tricks.sliding_window_view(series, w)        # [len-p, p+1]: (x_{s-p..s})
    N = len(series) - span + 1
    idx = np.arange(N)[:, None] + np.arange(n + 1)[None, :]           # [N, n+1]
    H = cols[idx].transpose(0, 2, 1).copy()                           # [N, p+1, n+1]
    target = H[:, -1, -1].copy()
    H[:, -1, -1] = 0.0
    return torch.from_numpy(H), torch.from_numpy(target)


def generate_ar_forecast(*, order: int = 7, history: int = 9, series_length: int = 2000, noise_std: float = 0.05,
                         seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """One stationary series -> (H [N, p+1, n+1], target [N], φ [p])."""
    rng = np.random.default_rng(seed)
    phi = sample_stationary_coefficients(order, rng)
    x = simulate_ar(phi, series_length, noise_std=noise_std, rng=rng)
    H, y = hankel_samples(x, order=order, history=history)
    return H, y, phi


def ols_ar_predict(H: torch.Tensor) -> torch.Tensor:
    """Per sample OLS AR(p) on its n full columns, then predict the query. H [N, p+1, n+1] -> [N]."""
    if H.dim() != 3:
        raise ValueError(f"H must have shape [N, p+1, n+1], got {tuple(H.shape)}")
    h = H.to(torch.float64)
    lags = h[:, :-1, :-1].transpose(1, 2)           # [N, n, p] rows (x_{s-p..s-1})
    y = h[:, -1, :-1, None]                         # [N, n, 1]
    phi = torch.linalg.pinv(lags) @ y               # [N, p, 1] (min-norm when n < p)
    q = h[:, :-1, -1]                               # query lags x_{t-p+1..t}  [N, p]
    return (q[:, None, :] @ phi)[:, 0, 0].to(H.dtype)
