"""Long causal depthwise convolution over time: FFT fast path, direct reference, decode cache.

    y[b, t, c] = sum_{i=0}^{min(L-1, t)} kernel[c, i] · x[b, t-i, c]       x [B, T, C], kernel [C, L]

`kernel[c, 0]` multiplies the current input (the convention of S4/H3/Hyena long convolutions:
the kernel is the impulse response). A kernel longer than T is truncated to T; a kernel shorter
than T is zero beyond L (so the receptive field is exactly L tokens).

- `direct_causal_conv` is the truth: an explicit sum over lags (float64 for float64 inputs).
- `fft_causal_conv` multiplies spectra with an FFT of size n >= 2T (a power of two), so the
  circular convolution equals the linear one on the first T outputs: O(T log T) per channel.
- `long_causal_conv` adds the decode cache (the last L-1 *real* inputs, zeros at the start of a
  sequence) and padding masks, with the same semantics as `causal_conv1d` in short.py: padded
  steps are skipped, so padding never changes real outputs or the returned cache.
"""

from __future__ import annotations

import torch

from attnzoo.ops.conv.short import compact_real_tokens


def _check(x, kernel):
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C], got shape {tuple(x.shape)}")
    if kernel.dim() != 2 or kernel.shape[0] != x.shape[-1] or kernel.shape[1] < 1:
        raise ValueError(f"kernel must be [C, L] = [{x.shape[-1]}, L >= 1], got {tuple(kernel.shape)}")


def _compute_dtype(x, kernel):
    return torch.float64 if torch.float64 in (x.dtype, kernel.dtype) else torch.float32


def direct_causal_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Reference: y_t = sum_i kernel[:, i] x_{t-i}, an explicit loop over lags."""
    _check(x, kernel)
    ct = _compute_dtype(x, kernel)
    xf, kf = x.to(ct), kernel.to(ct)
    T = x.shape[1]
    y = torch.zeros_like(xf)
    for i in range(min(kernel.shape[1], T)):
        y[:, i:] = y[:, i:] + kf[:, i] * xf[:, : T - i]
    return y.to(x.dtype)


def fft_size(T: int) -> int:
    """Smallest power of two >= 2T (so a length-T signal and kernel never wrap around)."""
    return 1 << max(1, (2 * T - 1).bit_length())


def fft_causal_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """y = causal conv of x [B, T, C] with kernel [C, L] via rFFT of size >= 2T; returns x's dtype."""
    _check(x, kernel)
    ct = _compute_dtype(x, kernel)
    T = x.shape[1]
    n = fft_size(T)
    k = kernel[:, :T].to(ct)
    xf = torch.fft.rfft(x.to(ct), n=n, dim=1)  # [B, n/2+1, C]
    kf = torch.fft.rfft(k, n=n, dim=1)  # [C, n/2+1]
    y = torch.fft.irfft(xf * kf.transpose(0, 1), n=n, dim=1)[:, :T]
    return y.to(x.dtype)


def long_causal_conv(x, kernel, *, cache=None, mask=None, output_cache=False, impl="fft"):
    """Long causal conv with decode cache and padding. Returns (y [B, T, C], new_cache [B, L-1, C] or None).

    cache [B, L-1, C]: the L-1 previous real inputs, oldest first (None: zeros, a fresh sequence).
    mask [B, T] bool (True = real): each real output sees the previous real inputs only.
    impl: "fft" or "direct" (the reference), used on the cache + input concatenation.
    """
    _check(x, kernel)
    B, T, C = x.shape
    L = kernel.shape[1]
    if impl not in ("fft", "direct"):
        raise ValueError(f"impl must be 'fft' or 'direct', got {impl!r}")
    if cache is None:
        cache = x.new_zeros(B, L - 1, C)
    elif tuple(cache.shape) != (B, L - 1, C):
        raise ValueError(f"long-conv cache must be [B, L-1, C] = {(B, L - 1, C)}, got {tuple(cache.shape)}")
    perm = None
    if mask is not None:
        perm = compact_real_tokens(mask)
        x = torch.gather(x, 1, perm[..., None].expand(B, T, C))
        x = x * torch.gather(mask, 1, perm)[..., None].to(x.dtype)  # padded steps (now last) are zero
    xc = torch.cat([cache.to(x.dtype), x], 1)  # [B, L-1+T, C]
    conv = fft_causal_conv if impl == "fft" else direct_causal_conv
    y = conv(xc, kernel)[:, L - 1 :]
    new_cache = None
    if output_cache:
        n_real = torch.full((B,), T, device=x.device) if mask is None else mask.sum(1)
        idx = n_real[:, None] + torch.arange(L - 1, device=x.device)  # last L-1 entries of cache + real
        new_cache = torch.gather(xc, 1, idx[..., None].expand(B, L - 1, C))
    if perm is not None:
        y = torch.empty_like(y).scatter_(1, perm[..., None].expand(B, T, C), y)
    return y, new_cache
