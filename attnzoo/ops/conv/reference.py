"""The truth for the causal convolutions: an explicit sum over lags, float32 (float64 for float64 inputs).

    y[b, t, c] = Σ_{i=0}^{min(L-1, t)} kernel[c, i] · x[b, t-i, c]       x [B, T, C], kernel [C, L]

`kernel[c, 0]` multiplies the current input (the impulse response). A short conv's weight w [C, W]
(oldest tap first, F.conv1d's order) is the kernel w.flip(-1).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype


def check_conv_inputs(x, kernel, name: str = "kernel") -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C], got shape {tuple(x.shape)}")
    if kernel.dim() != 2 or kernel.shape[0] != x.shape[-1] or kernel.shape[1] < 1:
        raise ValueError(f"{name} must be [C, L] = [{x.shape[-1]}, L >= 1], got {tuple(kernel.shape)}")


def direct_causal_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The reference long conv: y_t = Σ_i kernel[:, i] x_{t-i}, an explicit loop over lags.

    Args:
        x: [B, T, C]. kernel: [C, L] (kernel[:, 0] multiplies x_t; taps past T are unused).
    Returns:
        y [B, T, C] in x's dtype (computed in float32, float64 for float64 inputs).

    Example:
        >>> x = torch.tensor([[[1.0], [2.0], [3.0]]])  # B = 1, T = 3, C = 1
        >>> direct_causal_conv(x, torch.tensor([[1.0, 10.0]]))[0, :, 0]  # y_t = x_t + 10 x_{t-1}
        tensor([ 1., 12., 23.])
    """
    check_conv_inputs(x, kernel)
    ct = compute_dtype(x, kernel)
    xf, kf = x.to(ct), kernel.to(ct)
    T = x.shape[1]
    y = torch.zeros_like(xf)
    for i in range(min(kernel.shape[1], T)):
        y[:, i:] = y[:, i:] + kf[:, i] * xf[:, : T - i]
    return y.to(x.dtype)
