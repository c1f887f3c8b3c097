"""TTT-Linear's inner model and the closed-form gradient of its loss (shared by reference.py and
minibatch.py; tests hold it against autograd).

    f(x; W) = x + LN(z),  z = W [x; 1]        W [D, D + 1]: the weights and, as the last column, the bias
    ℓ(W; k, v) = ½ |f(k; W) − v|²,   ∇_W ℓ = (∂ℓ/∂z) [k; 1]ᵀ
    LN(z) = γ ⊙ ẑ + β,  ẑ = (z − mean z) / sqrt(var z + eps)      (over the last dim, γ, β per head)
    ∂ℓ/∂z = (g − mean(g) − ẑ mean(g ⊙ ẑ)) / sqrt(var z + eps),   g = γ ⊙ (f(k; W) − v)
"""

from __future__ import annotations

import torch

LN_EPS = 1e-6


def with_one(x):
    """[..., D] -> [..., D + 1]: x with a trailing 1 (the bias input)."""
    return torch.cat([x, torch.ones_like(x[..., :1])], -1)


def layer_norm(z, weight, bias, eps: float = LN_EPS):
    """(LN(z), ẑ, 1 / sqrt(var z + eps)) over the last dim; weight, bias broadcast against z."""
    mu = z.mean(-1, keepdim=True)
    zc = z - mu
    inv = torch.rsqrt(zc.pow(2).mean(-1, keepdim=True) + eps)
    zhat = zc * inv
    return weight * zhat + bias, zhat, inv


def loss_grad_z(k, v, z, weight, bias, eps: float = LN_EPS):
    """∂ℓ/∂z for ℓ = ½ |k + LN(z) − v|² (module docstring), z = W [k; 1]."""
    y, zhat, inv = layer_norm(z, weight, bias, eps)
    g = weight * (k + y - v)
    return inv * (g - g.mean(-1, keepdim=True) - zhat * (g * zhat).mean(-1, keepdim=True))


def inner_output(q, W, weight, bias, eps: float = LN_EPS):
    """f(q; W) = q + LN(W [q; 1]) for q [..., D], W [..., D, D + 1] (matching leading dims)."""
    z = (W @ with_one(q)[..., None])[..., 0]
    return q + layer_norm(z, weight, bias, eps)[0]
