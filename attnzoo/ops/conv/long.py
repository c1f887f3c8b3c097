"""The fast torch path of a causal depthwise convolution with a long kernel: F.conv1d or FFT.

    y[b, t, c] = Σ_{i=0}^{min(L-1, t)} kernel[c, i] · x[b, t-i, c]       x [B, T, C], kernel [C, L]

(the convention of S4/H3/Hyena long convolutions, reference.py). A kernel longer than T is
truncated to T; a kernel shorter than T is zero beyond L (the receptive field is exactly L tokens).

- F.conv1d: O(T·L) per channel, exactly causal, bit for bit.
- FFT: spectra multiplied at a size n >= 2T (a power of two), so the circular convolution equals
  the linear one on the first T outputs: O(T log T) per channel; causal only up to rounding (later
  inputs perturb earlier outputs at the level of machine epsilon times the output scale).
- Toeplitz: the same sums as one batched matmul per channel, y[:, t, c] = Σ_s K_c[t, s] x[:, s, c] with
  K_c[t, s] = kernel[c, t - s] (0 <= t - s < L): exactly causal, O(T·n_out) per channel like F.conv1d,
  but on the matmul units (cuDNN's depthwise conv with a long kernel is a slow path on GPUs). Builds
  K [C, n_out, T], so only while T <= TOEPLITZ_MAX_T.
- fft=None picks the direct form (Toeplitz, or F.conv1d when LONG_CONV_DIRECT = "conv1d") while the
  outputs asked for, or the kernel, are at most DIRECT_MAX_T long (where it is also the faster one on
  CPU), FFT beyond; on CUDA the Toeplitz form stays the direct one up to TOEPLITZ_MAX_T (1.5x faster than
  the FFT at T=256 on an H100, where the CPU's FFT is 4x faster than it).
"""

from __future__ import annotations

import torch

from attnzoo.ops.common.precision import compute_dtype, without_autocast
from attnzoo.ops.conv.reference import check_conv_inputs

__all__ = ["fast_causal_conv"]

DIRECT_MAX_T = 64
# the direct form: "conv1d" (F.conv1d, groups=C) or "toeplitz" (a batched matmul per channel, T <= TOEPLITZ_MAX_T).
# Toeplitz since the 2026-12-07 H100 check (benchmarks/results/long_conv/): within 8.1e-7 (fp32) / 2.3e-3 (bf16)
# of F.conv1d, fwd+bwd 4.6x F.conv1d at T=64 and 5.2x at T=256 (1.5x the FFT there, a quarter of its memory);
# the zoo's h3 / hyena / base_conv / Based group steps 1.17-1.64x. On this CPU it is ~2x F.conv1d at T=64 too.
LONG_CONV_DIRECT = "toeplitz"
TOEPLITZ_MAX_T = 256


def _fft_size(T: int) -> int:
    """Smallest power of two >= 2T (so a length-T signal and kernel never wrap around)."""
    return 1 << max(1, (2 * T - 1).bit_length())


def _fft_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    ct = compute_dtype(x, kernel)
    T = x.shape[1]
    n = _fft_size(T)
    k = kernel[:, :T].to(ct)
    xf = torch.fft.rfft(x.to(ct), n=n, dim=1)  # [B, n/2+1, C]
    kf = torch.fft.rfft(k, n=n, dim=1)  # [C, n/2+1]
    return torch.fft.irfft(xf * kf.transpose(0, 1), n=n, dim=1)[:, :T].to(x.dtype)


def _conv1d_conv(x: torch.Tensor, kernel: torch.Tensor, n_out: int) -> torch.Tensor:
    """Only the last n_out outputs are computed."""
    ct = compute_dtype(x, kernel)
    T = x.shape[1]
    k = kernel[:, :T].to(ct)
    L = k.shape[1]
    xs = x[:, T - n_out - min(L - 1, T - n_out) :].to(ct)  # the inputs the last n_out outputs need
    xp = torch.nn.functional.pad(xs.transpose(1, 2), (L - 1 - min(L - 1, T - n_out), 0))
    y = torch.nn.functional.conv1d(xp, k.flip(-1)[:, None], groups=x.shape[-1]).transpose(1, 2)
    return y.to(x.dtype)


def _toeplitz_conv(x: torch.Tensor, kernel: torch.Tensor, n_out: int) -> torch.Tensor:
    """The last n_out outputs as one matmul per channel against the lower-triangular Toeplitz matrix
    K_c[t, s] = kernel[c, t - s] (zero where t - s is negative or >= L)."""
    ct = compute_dtype(x, kernel)
    T = x.shape[1]
    k = kernel[:, :T].to(ct)
    L = k.shape[1]
    t = torch.arange(T - n_out, T, device=x.device)[:, None]
    lag = t - torch.arange(T, device=x.device)[None, :]  # [n_out, T]
    valid = (lag >= 0) & (lag < L)
    K = k[:, lag.clamp(0, L - 1)] * valid.to(ct)  # [C, n_out, T]
    return torch.einsum("cts,bsc->btc", K, x.to(ct)).to(x.dtype)


def _direct(x, kernel, n_out):
    if LONG_CONV_DIRECT not in ("conv1d", "toeplitz"):
        raise ValueError(f'LONG_CONV_DIRECT must be "conv1d" or "toeplitz", got {LONG_CONV_DIRECT!r}')
    if LONG_CONV_DIRECT == "toeplitz" and x.shape[1] <= TOEPLITZ_MAX_T:
        return _toeplitz_conv(x, kernel, n_out)
    return _conv1d_conv(x, kernel, n_out)


@without_autocast  # float32 (float64) as stated, whatever the caller's autocast
def fast_causal_conv(x: torch.Tensor, kernel: torch.Tensor, *, fft: bool | None = None,
                     n_out: int | None = None) -> torch.Tensor:
    """The last n_out (default all T) outputs [B, n_out, C] of the causal conv, in x's dtype.

    fft: True (FFT), False (the direct form: F.conv1d or Toeplitz, LONG_CONV_DIRECT) or None (direct while
    n_out or L <= DIRECT_MAX_T, else FFT)."""
    check_conv_inputs(x, kernel)
    T = x.shape[1]
    n_out = T if n_out is None else n_out
    limit = TOEPLITZ_MAX_T if LONG_CONV_DIRECT == "toeplitz" and x.is_cuda else DIRECT_MAX_T
    if fft is False or (fft is None and (n_out <= limit or kernel.shape[1] <= limit)):
        return _direct(x, kernel, n_out)
    return _fft_conv(x, kernel)[:, T - n_out :]
