"""Causal depthwise convolutions over time, with a decode state and padding masks.

    y, S = causal_conv1d(x, weight, bias=None, *, initial_state=None, output_final_state=False,
                         mask=None, activation=None, impl="auto")
    y, S = long_causal_conv(x, kernel, *, initial_state=None, output_final_state=False,
                            mask=None, fft=None, impl="auto")

x [B, T, C]. A short conv's weight [C, W] is in F.conv1d's order (oldest tap first, as in Mamba's
and H3's short convs); a long conv's kernel [C, L] is the impulse response (kernel[:, 0] multiplies
the current input, as in S4 / H3 / Hyena; Poli et al. 2023, arXiv:2302.10866):

    short: y_t = Σ_{j=0}^{W-1} w[:, j] · x_{t-W+1+j} (+ b)        long: y_t = Σ_{i<L} kernel[:, i] · x_{t-i}

The state is the last W-1 (L-1) *real* inputs, oldest first, zeros at a sequence's start: a
continuation from `initial_state` equals one call over the whole sequence. With a mask [B, T]
(True = real), padded steps are skipped: every real output sees the previous real inputs only and
the returned state holds the last real inputs, so padding never changes real outputs or the state.
Works for any T, including T < W and single-token steps.

impl: "reference" (the sum over lags, reference.py), "torch" or "auto" (F.conv1d; for a long
kernel F.conv1d or FFT, long.py: fft=None chooses by length). The short conv also has "triton" (one
kernel each way on the [B, T, C] layout, ops/conv/triton/; W <= 8), and its "torch" path is either
F.conv1d over a transposed [B, C, T] copy or a shift-and-add over time, y = Σ_j w[:, j] ⊙ xc[:, j:j+T]
(SHORT_CONV_TORCH; the shift path and the kernel avoid cuDNN's depthwise conv, whose bf16 fwd+bwd took
5.8 ms of a 16.3 ms deltanet layer on the H100: benchmarks/results/short_conv/).
"auto" takes the kernel on CUDA when SHORT_CONV_TRITON_AUTO is on (it is since the H100 run of
benchmarks/results/short_conv/: outputs and all gradients within 2.6e-3 of float32 in bf16, 2.3x F.conv1d
fwd+bwd alone, whole deltanet layers 1.55x faster). A long conv has no Triton kernel; its direct form is
F.conv1d or, with long.LONG_CONV_DIRECT = "toeplitz", one matmul per channel (long.py), which the short
conv's torch path also takes for W > MAX_W (H3's shift SSM, W = d_state) when that switch is on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.ops.common.dispatch import op_override, resolve_impl
from attnzoo.ops.conv import long as long_conv
from attnzoo.ops.conv.long import fast_causal_conv
from attnzoo.ops.conv.padding import last_real_inputs, previous_inputs, real_tokens_first, restore_token_order
from attnzoo.ops.conv.reference import check_conv_inputs, direct_causal_conv
from attnzoo.ops.conv.triton import MAX_W, triton_short_conv, triton_short_supported

# impl="auto" takes the Triton short conv on CUDA: checked and timed on an H100 by benchmarks/gpu_short_conv.py
# (2026-12-07, benchmarks/results/short_conv/); False returns "auto" to the torch path.
SHORT_CONV_TRITON_AUTO = True
# the short conv's "torch" path: "conv1d" (F.conv1d, groups=C, on a [B, C, T] copy) or "shift" (W shifted
# multiply-adds over [B, T, C], in x's dtype)
SHORT_CONV_TORCH = "conv1d"

# a mixer's conv_impl word (hyena, base_conv, h3) -> long_causal_conv's fft argument
CONV_PATHS = {"auto": None, "direct": False, "fft": True}


def fft_choice(conv_impl: str):
    """long_causal_conv's fft argument for a mixer's conv_impl word ("auto", "direct" or "fft")."""
    if conv_impl not in CONV_PATHS:
        raise ValueError(f"conv_impl must be one of {tuple(CONV_PATHS)}, got {conv_impl!r}")
    return CONV_PATHS[conv_impl]


def _resolve(impl, x, name, has_kernel=False, supported=False):
    impl = resolve_impl(impl, x, triton_supported=has_kernel and supported)
    if impl == "triton" and not has_kernel:
        raise ValueError(f'{name} has no Triton kernel; use impl="torch" or "reference"')
    return impl


def causal_conv1d(x, weight, bias=None, *, initial_state=None, output_final_state=False, mask=None,
                  activation=None, impl="auto"):
    """Short causal depthwise conv with a decode state (the module docstring has the formula).

    Args:
        x: [B, T, C]. weight: [C, W] (oldest tap first). bias: [C] or None.
        initial_state: [B, W-1, C], the W-1 previous real inputs (None: zeros, a fresh sequence).
        output_final_state: also return the last W-1 real inputs [B, W-1, C].
        mask: bool [B, T], True for real steps; activation: None or "silu".
    Returns:
        (y [B, T, C] in x's dtype, final_state [B, W-1, C] or None).

    Example:
        >>> x, w = torch.randn(2, 10, 4), torch.randn(4, 3)
        >>> y, S = causal_conv1d(x, w, output_final_state=True)
        >>> y.shape, S.shape
        (torch.Size([2, 10, 4]), torch.Size([2, 2, 4]))
        >>> y1, S1 = causal_conv1d(x[:, :6], w, output_final_state=True)  # a prefix, then the rest
        >>> torch.allclose(torch.cat([y1, causal_conv1d(x[:, 6:], w, initial_state=S1)[0]], 1), y, atol=1e-6)
        True
    """
    if x.dim() != 3:
        raise ValueError(f"x must be [B, T, C], got shape {tuple(x.shape)}")
    B, T, C = x.shape
    if weight.dim() != 2 or weight.shape[0] != C:
        raise ValueError(f"weight must be [C, W] = [{C}, W], got {tuple(weight.shape)}")
    if activation not in (None, "silu"):
        raise ValueError(f"activation must be None or 'silu', got {activation!r}")
    impl = _resolve(impl, x, "causal_conv1d", has_kernel=True,
                    supported=SHORT_CONV_TRITON_AUTO and triton_short_supported(x, weight))
    if SHORT_CONV_TORCH not in ("conv1d", "shift"):
        raise ValueError(f'SHORT_CONV_TORCH must be "conv1d" or "shift", got {SHORT_CONV_TORCH!r}')
    W = weight.shape[1]
    given = initial_state is not None
    state = previous_inputs(x, initial_state, W - 1, name="initial_state must be [B, W-1, C]")
    halo = op_override("conv_cache")  # sequence parallel: the previous ranks' last W-1 real inputs
    if halo is not None:
        state, given = halo(x, mask, state, W - 1), True
    perm = None
    if mask is not None:
        x, _, perm = real_tokens_first(x, mask)
    if impl == "triton":
        y = triton_short_conv(x, weight, bias, initial_state=state if given else None, activation=activation)
        final = _last_inputs(x, state, mask, W - 1) if output_final_state else None
    else:
        xc = torch.cat([state.to(x.dtype), x], 1)  # [B, W-1+T, C]
        if impl == "reference":
            y = direct_causal_conv(xc, weight.flip(-1))[:, W - 1:]
            y = y if bias is None else y + bias.to(x.dtype)
        elif W > MAX_W and long_conv.LONG_CONV_DIRECT == "toeplitz":  # H3's shift SSM (W = d_state): a matmul
            y = fast_causal_conv(xc, weight.flip(-1), fft=False, n_out=T)
            y = y if bias is None else y + bias.to(x.dtype)
        elif SHORT_CONV_TORCH == "shift":
            y = shift_conv(xc, weight, bias)
        else:
            y = F.conv1d(xc.transpose(1, 2), weight[:, None, :].to(x.dtype),
                         None if bias is None else bias.to(x.dtype), groups=C).transpose(1, 2)
        if activation == "silu":
            y = F.silu(y)
        final = last_real_inputs(xc, mask, W - 1) if output_final_state else None
    if perm is not None:
        y = restore_token_order(y, perm)
    return y, final


def shift_conv(xc, weight, bias=None):
    """The short conv as W shifted multiply-adds in xc's dtype: y = b + Σ_j w[:, j] ⊙ xc[:, j:j+T].

    xc [B, W-1+T, C] (the W-1 previous inputs, then x); weight [C, W] (oldest tap first); bias [C] or None.
    Returns y [B, T, C] (no transposed copy, no cuDNN).
    """
    W = weight.shape[1]
    T = xc.shape[1] - W + 1
    w = weight.to(xc.dtype)
    y = xc[:, W - 1:] * w[:, W - 1]
    if bias is not None:
        y = y + bias.to(xc.dtype)
    for j in range(W - 1):
        y = torch.addcmul(y, xc[:, j:j + T], w[:, j])
    return y


def _last_inputs(x, state, mask, keep):
    """The last `keep` real inputs of [state ; x] (x with real tokens first), as last_real_inputs gives, but
    without building the concatenation: [B, keep, C] in x's dtype."""
    B, T, C = x.shape
    n = torch.full((B,), T, device=x.device) if mask is None else mask.sum(1)
    idx = n[:, None] - keep + torch.arange(keep, device=x.device)  # [B, keep] rows of x; < 0: of the state
    from_x = torch.gather(x, 1, idx.clamp(0, T - 1)[..., None].expand(B, keep, C))
    from_s = torch.gather(state.to(x.dtype), 1, (idx + keep).clamp(max=max(keep - 1, 0))[..., None].expand(B, keep, C))
    return torch.where((idx >= 0)[..., None], from_x, from_s)


def long_causal_conv(x, kernel, *, initial_state=None, output_final_state=False, mask=None, fft=None,
                     impl="auto"):
    """Long causal depthwise conv with a decode state (the module docstring has the formula).

    Args:
        x: [B, T, C]. kernel: [C, L], the impulse response (kernel[:, 0] multiplies x_t).
        initial_state: [B, L-1, C], the L-1 previous real inputs (None: zeros, a fresh sequence).
        output_final_state: also return the last L-1 real inputs [B, L-1, C].
        mask: bool [B, T], True for real steps.
        fft: the torch path's algorithm: True (FFT), False (F.conv1d), None (by length, long.py).
    Returns:
        (y [B, T, C] in x's dtype, final_state [B, L-1, C] or None).

    Example:
        >>> x, kernel = torch.randn(1, 100, 3), torch.randn(3, 100) / 10
        >>> y, S = long_causal_conv(x, kernel, output_final_state=True, fft=True)
        >>> y.shape, S.shape
        (torch.Size([1, 100, 3]), torch.Size([1, 99, 3]))
        >>> torch.allclose(y, long_causal_conv(x, kernel, impl="reference")[0], atol=1e-5)
        True
    """
    check_conv_inputs(x, kernel)
    if fft not in (None, True, False):
        raise ValueError(f"fft must be None, True or False, got {fft!r}")
    impl = _resolve(impl, x, "long_causal_conv")
    T = x.shape[1]
    L = kernel.shape[1]
    fresh = initial_state is None  # a fresh sequence: the history is zeros and adds nothing to y
    state = previous_inputs(x, initial_state, L - 1, name="initial_state must be [B, L-1, C]")
    perm = None
    if mask is not None:
        x, real, perm = real_tokens_first(x, mask)
        x = torch.where(real[..., None], x, x.new_zeros(()))  # padded steps (now last) are zero
    xc = torch.cat([state.to(x.dtype), x], 1) if output_final_state or not fresh else None  # [B, L-1+T, C]
    # without a state, convolve x alone: the L-1 zeros would cost O(L) per output (50x at T=64, L=2048)
    src = x if fresh else xc
    if impl == "reference":
        y = direct_causal_conv(src, kernel)[:, src.shape[1] - T:]
    else:
        y = fast_causal_conv(src, kernel, fft=fft, n_out=T)
    final = last_real_inputs(xc, mask, L - 1) if output_final_state else None
    if perm is not None:
        y = restore_token_order(y, perm)
    return y, final
