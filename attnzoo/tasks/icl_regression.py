"""In-context linear regression prompts and their ridge / OLS optimum.

He, Pan, Chen, Yang (2025), "In-context linear regression demystified: training dynamics and
mechanistic interpretability of multi-head softmax attention", ICML 2025, arXiv:2503.12734
(the task follows Garg, Tsipras, Liang, Valiant 2022, arXiv:2208.01066).

Per prompt: β ~ N(0, I_d), x_l ~ N(0, I_d), y_l = βᵀx_l + ε_l, ε_l ~ N(0, σ²), l = 1..L, and a query
x_q. Tokens z_l = (x_l, y_l) ∈ R^{d+1}; the query token is (x_q, 0). So

    z [N, L+1, d+1] float, target y_q [N] (noise-free βᵀx_q + ε_q).

Baseline per prompt: ridge β̂ = (XᵀX + λI)⁻¹Xᵀy, prediction x_qᵀβ̂; λ = σ² is the Bayes-optimal
(posterior mean) estimator under β ~ N(0, I); λ = 0 is OLS (minimum-norm via lstsq when L < d).
"""

from __future__ import annotations

import torch


def generate_icl_regression(num_prompts: int, *, dim: int = 8, num_pairs: int = 16, noise_std: float = 0.1,
                            seed: int = 0, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (z [N, L+1, d+1], y_query [N])."""
    if num_prompts < 1 or dim < 1 or num_pairs < 1:
        raise ValueError(f"num_prompts, dim and num_pairs must be positive, got {num_prompts}, {dim}, {num_pairs}")
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    g = torch.Generator().manual_seed(seed)
    beta = torch.randn(num_prompts, dim, generator=g, dtype=torch.float64)
    x = torch.randn(num_prompts, num_pairs + 1, dim, generator=g, dtype=torch.float64)
    y = torch.einsum("nld,nd->nl", x, beta) + noise_std * torch.randn(num_prompts, num_pairs + 1, generator=g,
                                                                       dtype=torch.float64)
    z = torch.cat([x, y[..., None]], dim=-1)
    target = z[:, -1, -1].clone()
    z[:, -1, -1] = 0.0
    return z.to(dtype), target.to(dtype)


def ridge_predict(z: torch.Tensor, *, ridge: float) -> torch.Tensor:
    """Per-prompt ridge (ridge > 0) or minimum-norm OLS (ridge = 0) prediction at the query. z [N, L+1, d+1] -> [N]."""
    if z.dim() != 3 or z.shape[-1] < 2:
        raise ValueError(f"z must have shape [N, L+1, d+1] with d >= 1, got {tuple(z.shape)}")
    if ridge < 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    zz = z.to(torch.float64)
    X, y, xq = zz[:, :-1, :-1], zz[:, :-1, -1:], zz[:, -1, :-1]
    if ridge > 0:
        d = X.shape[-1]
        A = X.transpose(1, 2) @ X + ridge * torch.eye(d, dtype=zz.dtype)
        beta = torch.linalg.solve(A, X.transpose(1, 2) @ y)
    else:
        beta = torch.linalg.pinv(X) @ y
    return (xq[:, None, :] @ beta)[:, 0, 0].to(z.dtype)


def baseline_mse(z: torch.Tensor, y_query: torch.Tensor, *, ridge: float) -> float:
    return float(((ridge_predict(z, ridge=ridge) - y_query) ** 2).mean())
