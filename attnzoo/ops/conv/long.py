"""Long causal depthwise convolution over time: FFT fast path, direct reference, decode cache.

    y[b, t, c] = sum_{i=0}^{min(L-1, t)} kernel[c, i] · x[b, t-i, c]       x [B, T, C], kernel [C, L]

`kernel[c, 0]` multiplies the current input (the convention of S4/H3/Hyena long convolutions:
the kernel is the impulse response). A kernel longer than T is truncated to T; a kernel shorter
than T is zero beyond L (so the receptive field is exactly L tokens).

- `direct_causal_conv` is the truth: an explicit sum over lags (float64 for float64 inputs).
- `fft_causal_conv` multiplies spectra with an FFT of size n >= 2T (a power of two), so the
  circular convolution equals the linear one on the first T outputs: O(T log T) per channel.
- `conv1d_causal_conv` is the direct fast path (F.conv1d, O(T·L) per channel). It is exactly
  causal, bit for bit; the FFT path is causal only up to rounding (later inputs perturb earlier
  outputs at the level of machine epsilon times the output scale). `causal_long_conv(impl="auto")`
  uses the direct path while T <= DIRECT_MAX_T (where it is also the faster one on CPU), FFT beyond.
- `long_causal_conv` adds the decode cache (the last L-1 *real* inputs, zeros at the start of a
  sequence) and padding masks, with the same semantics as `causal_conv1d` in short.py: padded
  steps are skipped, so padding never changes real outputs or the returned cache.
"""

from __future__ import annotations

import torch

from attnzoo.ops.conv.short import last_real_inputs, previous_inputs, real_tokens_first, restore_token_order
from attnzoo.ops.dispatch import without_autocast

DIRECT_MAX_T = 64
IMPLS = ("auto", "fft", "direct")


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


def conv1d_causal_conv(x: torch.Tensor, kernel: torch.Tensor, *, n_out: int | None = None) -> torch.Tensor:
    """Direct path with F.conv1d; only the last n_out outputs (default all T) are computed."""
    _check(x, kernel)
    ct = _compute_dtype(x, kernel)
    T = x.shape[1]
    n_out = T if n_out is None else n_out
    k = kernel[:, :T].to(ct)
    L = k.shape[1]
    xs = x[:, T - n_out - min(L - 1, T - n_out) :].to(ct)  # the inputs the last n_out outputs need
    xp = torch.nn.functional.pad(xs.transpose(1, 2), (L - 1 - min(L - 1, T - n_out), 0))
    y = torch.nn.functional.conv1d(xp, k.flip(-1)[:, None], groups=x.shape[-1]).transpose(1, 2)
    return y.to(x.dtype)


@without_autocast  # float32 (float64) as stated, whatever the caller's autocast
def causal_long_conv(x: torch.Tensor, kernel: torch.Tensor, *, impl: str = "auto", n_out: int | None = None):
    """Dispatch: "direct" (F.conv1d), "fft", or "auto" (direct while T <= DIRECT_MAX_T). Last n_out outputs."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    n_out = x.shape[1] if n_out is None else n_out
    if impl == "direct" or (impl == "auto" and (n_out <= DIRECT_MAX_T or kernel.shape[1] <= DIRECT_MAX_T)):
        return conv1d_causal_conv(x, kernel, n_out=n_out)
    return fft_causal_conv(x, kernel)[:, x.shape[1] - n_out :]


def long_causal_conv(x, kernel, *, cache=None, mask=None, output_cache=False, impl="auto"):
    """Long causal conv with decode cache and padding. Returns (y [B, T, C], new_cache [B, L-1, C] or None).

    cache [B, L-1, C]: the L-1 previous real inputs, oldest first (None: zeros, a fresh sequence).
    mask [B, T] bool (True = real): each real output sees the previous real inputs only.
    impl: "auto", "fft" or "direct" (see causal_long_conv), used on the cache + input concatenation.
    """
    _check(x, kernel)
    B, T, C = x.shape
    L = kernel.shape[1]
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    fresh = cache is None  # a fresh sequence: the history is zeros and adds nothing to y
    cache = previous_inputs(x, cache, L - 1, name="long-conv cache must be [B, L-1, C]")
    perm = None
    if mask is not None:
        x, real, perm = real_tokens_first(x, mask)
        x = torch.where(real[..., None], x, x.new_zeros(()))  # padded steps (now last) are zero
    xc = torch.cat([cache.to(x.dtype), x], 1)  # [B, L-1+T, C]
    # without a cache, convolve x alone: the L-1 zeros would cost O(L) per output (50x at T=64, L=2048)
    y = causal_long_conv(x if fresh else xc, kernel, impl=impl, n_out=T)
    new_cache = last_real_inputs(xc, mask, L - 1) if output_cache else None
    if perm is not None:
        y = restore_token_order(y, perm)
    return y, new_cache
