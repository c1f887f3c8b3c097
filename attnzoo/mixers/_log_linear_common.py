"""Pieces the log-linear mixers share (log_linear_mamba2, log_linear_gdn; Guo et al. 2025,
"Log-Linear Attention", arXiv:2506.04761): the level state, the per-level weights lambda_t^(l) and
the state's size.

- `LevelRecurrentState`: S [B, H, levels, K, V] (level i + 1 at index i; levels = min(n_levels - 1,
  bit_length(count)) grows with log2 of the tokens seen), count [B] int64, the short-conv cache.
- `LevelWeights`: lambda_t = softplus(x_t W_lambda + b) [B, T, H, n_levels], one weight per head and
  level from a projection of x_t (positive; b starts at softplus^-1(1), so at init the levels weigh
  about equally and the mixer starts near its base model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attnzoo.mixers.base import MixerState
from attnzoo.ops.loglinear import LevelState
from attnzoo.ops.loglinear.fenwick import stored_levels
from attnzoo.registry import Paper

LOG_LINEAR = Paper("Log-Linear Attention", "Guo, Yang, Goel, Xing, Dao & Kim", 2025, "2506.04761")
LOG_LINEAR_CLAIM = ("A logarithmically growing set of hidden states (a Fenwick-tree partition of the prefix) keeps a "
                    "matmul-rich parallel form at O(T log T) compute and O(log T) decoding memory; log-linear "
                    "Mamba-2 and Gated DeltaNet perform well against their linear-time versions.")


@dataclass
class LevelRecurrentState(MixerState):
    """Log-linear attention's decoding state: the level matrices S [B, H, levels, K, V] (fp32), the real
    tokens seen `count` [B] int64 (the Fenwick position of the next token) and the short-conv cache."""

    S: torch.Tensor
    count: torch.Tensor
    conv: torch.Tensor | None = None

    def levels(self) -> LevelState:
        return LevelState(self.S, self.count)


def check_level_state(state: LevelRecurrentState, n_heads: int, k: int, v: int, n_levels: int, conv=None):
    S, n = state.S, state.count
    if not isinstance(S, torch.Tensor) or S.dim() != 5 or (S.shape[1], S.shape[3], S.shape[4]) != (n_heads, k, v) \
            or S.shape[2] > n_levels - 1:
        got = tuple(S.shape) if isinstance(S, torch.Tensor) else type(S).__name__
        raise ValueError(f"state.S must be [B, {n_heads}, levels <= {n_levels - 1}, {k}, {v}], got {got}")
    if not isinstance(n, torch.Tensor) or tuple(n.shape) != (S.shape[0],) or n.is_floating_point():
        got = tuple(n.shape) if isinstance(n, torch.Tensor) else type(n).__name__
        raise ValueError(f"state.count must be an int64 tensor [B] = [{S.shape[0]}], got {got}")
    if conv is not None:
        if state.conv is None:
            raise ValueError("state.conv must hold the short-conv cache, got None")
        conv.check_cache(state.conv, S.shape[0])


def level_state_bytes(n_heads: int, k: int, v: int, seq_len: int, n_levels: int, conv_channels: int,
                      conv_kernel: int) -> int:
    """fp32 level matrices (min(n_levels - 1, bit_length(seq_len)) of [H, K, V]: growing with log2 T up to
    the cap), the int64 count and the short-conv cache."""
    levels = max(1, stored_levels(seq_len, n_levels))
    return 4 * (levels * n_heads * k * v + conv_channels * max(conv_kernel - 1, 0)) + 8


def check_n_levels(n_levels) -> int:
    if isinstance(n_levels, bool) or not isinstance(n_levels, int) or n_levels < 2:
        raise ValueError(f"n_levels must be an int >= 2 (level 0 and at least one older level), got {n_levels!r}")
    return n_levels


class LevelWeights(nn.Module):
    """lambda_t^(l) = softplus(x_t W + b): x [B, T, d_model] -> [B, T, n_heads, n_levels]."""

    def __init__(self, d_model: int, n_heads: int, n_levels: int):
        super().__init__()
        self.n_heads, self.n_levels = n_heads, check_n_levels(n_levels)
        self.proj = nn.Linear(d_model, n_heads * n_levels, bias=True)
        nn.init.constant_(self.proj.bias, math.log(math.e - 1.0))    # softplus(b) = 1
        self.proj._keep_init = True           # LanguageModel(init="gpt2") leaves it

    def forward(self, x):
        B, T, _ = x.shape
        return F.softplus(self.proj(x)).view(B, T, self.n_heads, self.n_levels)
