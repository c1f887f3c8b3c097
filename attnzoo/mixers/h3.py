"""H3 (Hungry Hungry Hippos): Fu, Dao, Saab, Thomas, Rudra & Ré 2023, "Hungry Hungry Hippos: Towards
Language Modeling with State Space Models", arXiv:2212.14052.

x [B, T, d_model] -> y [B, T, d_model]; heads of size d_h (default 1), d_state N (even):

    Q, K, V = x W_Q + b_Q, x W_K + b_K, x W_V + b_V
    K̄_t = Σ_{i<N} c_i ⊙ K_{t-i} + D_k ⊙ K_t          shift SSM = a causal FIR of length N per channel
    KV_t = K̄_t V_tᵀ per head  (d_h x d_h; with d_h = 1 simply K̄ ⊙ V)
    h_t = Ā h_{t-1} + B̄ KV_t,  Y_t = 2 Re(C h_t) + D ⊙ KV_t   diagonal SSM, N/2 complex modes per channel
    O_t = Q_tᵀ Y_t per head;  out = O W_out

Diagonal SSM (S4D-Lin, Gu et al. 2022, arXiv:2206.11893): A_n = -1/2 + iπn, zero-order hold
Ā = exp(Δ A), B̄ = (Ā - 1) / A · B, Δ log-uniform in [1e-3, 1e-1] per channel. Training and
prefill use the kernel K_l = 2 Re(Σ_n C_n B̄_n Ā_n^l) as an FFT convolution (size >= 2T); decoding
uses the recurrent step (roll the shift cache, h <- Ā h + B̄ KV). `ssm_impl`: "fft", "direct"
(the same kernel through F.conv1d: exactly causal, faster for short T), "recurrent", or "auto"
(recurrent for T = 1, else direct while T <= 64 and FFT beyond); all agree (tested). The FFT path
is causal up to rounding only (later tokens move earlier outputs by ~machine epsilon).
`H3State`: shift [B, N-1, d_model] (last real K inputs), ssm [B, C, N/2, 2] (h as real pairs).
With a mask, real tokens are compacted to the front (an LTI state would otherwise decay through
padded steps), and the final state is read from the real tokens only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from attnzoo.mixers.base import Mixer, MixerState, drop_padding
from attnzoo.ops.conv import causal_conv1d, long_causal_conv
from attnzoo.ops.conv.api import fft_choice
from attnzoo.ops.conv.padding import real_tokens_first, restore_token_order
from attnzoo.registry import Card, Paper, register

SSM_IMPLS = ("auto", "fft", "direct", "recurrent")
BLOCK = 256  # time steps per block when materialising Ā^l (bounds memory at C · N/2 · BLOCK)


@dataclass
class H3State(MixerState):
    """shift [B, N-1, d_model] (shift-SSM cache), ssm [B, C, N/2, 2] (diagonal state, real/imag)."""

    shift: torch.Tensor
    ssm: torch.Tensor


def h3_state_bytes(d_model: int, n_heads: int, seq_len: int, d_state: int = 64, head_dim: int = 1) -> int:
    return 4 * (d_model * (d_state - 1) + d_model * head_dim * d_state)


def vandermonde(coef: torch.Tensor, dtA: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """2 Re(Σ_n coef[..., c, n] · exp((start + l) dtA[c, n])) for l < length: [..., length, C] (real)."""
    out = []
    for s in range(0, length, BLOCK):
        steps = torch.arange(start + s, start + min(length, s + BLOCK), device=dtA.device, dtype=dtA.real.dtype)
        powers = torch.exp(dtA[..., None] * steps)  # [C, N2, l]
        out.append(2 * torch.einsum("...cn,cnl->...lc", coef, powers).real)
    return torch.cat(out, -2)


class H3(Mixer):
    state_class = H3State

    def __init__(self, d_model: int, *, d_state: int = 64, head_dim: int = 1, dt_min: float = 1e-3,
                 dt_max: float = 1e-1, ssm_impl: str = "auto"):
        super().__init__(d_model)
        if d_state < 2 or d_state % 2:
            raise ValueError(f"d_state must be an even int >= 2 (N/2 complex modes), got {d_state}")
        if ssm_impl not in SSM_IMPLS:
            raise ValueError(f"ssm_impl must be one of {SSM_IMPLS}, got {ssm_impl!r}")
        if head_dim < 1 or d_model % head_dim:
            raise ValueError(f"head_dim must divide d_model={d_model}, got {head_dim}")
        self.n_heads = d_model // head_dim
        self.head_dim, self.d_state, self.ssm_impl = head_dim, d_state, ssm_impl
        self.channels = d_model * head_dim  # H heads x d_h x d_h
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(3))
        self.out_proj = nn.Linear(d_model, d_model)
        self.shift_c = nn.Parameter(torch.randn(d_model, d_state) * (2.0 / d_state) ** 0.5)  # c_i, kaiming-normal
        self.shift_d = nn.Parameter(torch.randn(d_model))
        C, N2 = self.channels, d_state // 2
        log_dt = torch.rand(C) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        self.log_neg_A_re = nn.Parameter(torch.full((C, N2), math.log(0.5)))
        self.A_im = nn.Parameter(math.pi * torch.arange(N2, dtype=torch.float32).repeat(C, 1))
        self.B = nn.Parameter(torch.stack([torch.ones(C, N2), torch.zeros(C, N2)], -1))
        self.C = nn.Parameter(torch.randn(C, N2, 2) * 0.5**0.5)
        self.D = nn.Parameter(torch.randn(C))

    def check_state(self, state: H3State):
        ws, wh = (self.d_state - 1, self.d_model), (self.channels, self.d_state // 2, 2)
        if tuple(state.shift.shape[1:]) != ws or tuple(state.ssm.shape[1:]) != wh:
            raise ValueError(f"H3State must hold shift [B, {ws[0]}, {ws[1]}] and ssm [B, {wh[0]}, {wh[1]}, 2], "
                             f"got {tuple(state.shift.shape)} and {tuple(state.ssm.shape)}")

    def discretize(self, real_dtype):
        """(dtA, B̄·C-free B̄, C) as complex tensors [C, N/2] in the compute precision."""
        cdt = torch.complex128 if real_dtype == torch.float64 else torch.complex64
        rdt = torch.float64 if real_dtype == torch.float64 else torch.float32
        A = torch.complex(-torch.exp(self.log_neg_A_re.to(rdt)), self.A_im.to(rdt))
        dtA = torch.exp(self.log_dt.to(rdt))[:, None] * A
        B = torch.view_as_complex(self.B.to(rdt).contiguous())
        Bbar = (torch.exp(dtA) - 1) / A * B
        return dtA.to(cdt), Bbar.to(cdt), torch.view_as_complex(self.C.to(rdt).contiguous()).to(cdt)

    def ssm_conv(self, u, h0, n_real, return_state, impl="auto"):
        """Kernel form. u [B, T, C] (padded steps zero, real first); h0 [B, C, N2] complex or None."""
        Bsz, T, _ = u.shape
        dtA, Bbar, C = self.discretize(u.dtype)
        kernel = vandermonde(C * Bbar, dtA, 0, T).transpose(0, 1)  # [C, T]
        y = long_causal_conv(u, kernel, fft=fft_choice(impl))[0]
        if h0 is not None:
            y = y + vandermonde(C * h0, dtA, 1, T)  # C Ā^{t+1} h0
        h = None
        if return_state:  # right-align the real tokens: h = Σ_s Ā^{T-1-s} B̄ u_s (+ Ā^{n} h0)
            idx = (torch.arange(T, device=u.device) + n_real[:, None]) % T
            ur = torch.gather(u, 1, idx[..., None].expand_as(u)).to(dtA.dtype)
            h = torch.zeros(Bsz, *dtA.shape, dtype=dtA.dtype, device=u.device)
            for s in range(0, T, BLOCK):
                e = min(T, s + BLOCK)
                steps = torch.arange(T - 1 - s, T - 1 - e, -1, device=u.device, dtype=u.real.dtype)
                h = h + torch.einsum("bsc,cns->bcn", ur[:, s:e], torch.exp(dtA[..., None] * steps))
            h = h * Bbar
            if h0 is not None:
                h = h + torch.exp(dtA * n_real[:, None, None].to(u.dtype)) * h0
        return y + self.D.to(u.dtype) * u, h

    def ssm_recurrent(self, u, h0, real):
        """The decoding step, looped: h <- Ā h + B̄ u_t (skipped where real is False)."""
        Bsz, T, _ = u.shape
        dtA, Bbar, C = self.discretize(u.dtype)
        Abar = torch.exp(dtA)
        h = torch.zeros(Bsz, *dtA.shape, dtype=dtA.dtype, device=u.device) if h0 is None else h0
        ys = []
        for t in range(T):
            h_new = Abar * h + Bbar * u[:, t, :, None]
            h = torch.where(real[:, t, None, None], h_new, h)
            ys.append(2 * (C * h).sum(-1).real)
        return torch.stack(ys, 1) + self.D.to(u.dtype) * u, h

    def _forward(self, x, mask, state, return_state):
        Bsz, T, d = x.shape
        H, dh = self.n_heads, self.head_dim
        perm = None
        if mask is not None:
            x, mask, perm = real_tokens_first(x, mask)
        real = torch.ones(Bsz, T, dtype=torch.bool, device=x.device) if mask is None else mask
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        kbar, shift = causal_conv1d(k, self.shift_c.flip(-1), initial_state=None if state is None else state.shift,
                                    mask=mask, output_final_state=return_state)
        kbar = kbar + self.shift_d * k
        kv = torch.einsum("bthi,bthj->bthij", kbar.view(Bsz, T, H, dh), v.view(Bsz, T, H, dh))
        u = drop_padding(kv.reshape(Bsz, T, self.channels), real)
        cdt = u.dtype if u.dtype == torch.float64 else torch.float32
        h0 = None if state is None else torch.view_as_complex(state.ssm.to(cdt).contiguous())
        if self.ssm_impl == "recurrent" or (self.ssm_impl == "auto" and T == 1):
            yf, h = self.ssm_recurrent(u.to(cdt), h0, real)
        else:
            yf, h = self.ssm_conv(u.to(cdt), h0, real.sum(1), return_state, impl=self.ssm_impl)
        Y = yf.to(x.dtype).view(Bsz, T, H, dh, dh)
        o = torch.einsum("bthi,bthij->bthj", q.view(Bsz, T, H, dh), Y).reshape(Bsz, T, d)
        y = self.out_proj(o)
        if perm is not None:
            y = restore_token_order(y, perm)
        new_state = H3State(shift=shift, ssm=torch.view_as_real(h).contiguous()) if return_state else None
        return y, new_state

    def extra_repr(self):
        return f"d_model={self.d_model}, d_state={self.d_state}, head_dim={self.head_dim}"


@register(
    "h3",
    card=Card(
        title="H3: shift SSM on K, diagonal SSM (S4D-Lin) on K̄V via FFT conv, Q gating",
        paper=Paper("Hungry Hungry Hippos: Towards Language Modeling with State Space Models",
                    "Fu, Dao, Saab, Thomas, Rudra & Ré", 2023, "2212.14052"),
        family="ssm",
        complexity="O(T log T d d_h)",
        state_bytes=h3_state_bytes,
        causal=True,
        example_kwargs={"d_state": 8, "head_dim": 2},
    ),
)
class RegisteredH3(H3):
    """H3 as a registered mixer (see H3)."""
