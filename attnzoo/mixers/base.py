"""The mixer contract.

A Mixer maps x [B, T, d_model] to y [B, T, d_model] (same dtype):

    y = mixer(x)                                        # whole sequence
    y = mixer(x, mask=m)                                # m bool [B, T], True = real token
    y, s = mixer(x[:, :t], return_state=True)           # causal mixers: keep a state
    y2 = mixer(x[:, t:], state=s)                       # ... and continue from it

- causal: y[:, t] depends only on x[:, :t+1].
- Padded positions (mask False) change neither the outputs at real positions nor the state.
- A non-causal mixer given a state raises ValueError.
- A mixer with a training-time auxiliary loss exposes it as `self.aux_loss` after forward.

Subclasses implement `_forward(x, mask, state, return_state)` and return (y, new_state);
`forward` validates the input first and so gives every mixer the same errors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import nn


class MixerState:
    """Base for state dataclasses: plain tensors plus a batch size check and detach/clone."""

    def batch_size(self) -> int:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return v.shape[0]
            if isinstance(v, MixerState):
                return v.batch_size()
        return -1

    def map(self, fn):
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = fn(v)
            elif isinstance(v, MixerState):
                v = v.map(fn)
            kw[f.name] = v
        return type(self)(**kw)

    def detach(self):
        return self.map(lambda t: t.detach())


@dataclass
class RecurrentState(MixerState):
    """A fixed-size recurrent state: S [B, H, K, V] (fp32), plus optional short-conv caches."""

    S: torch.Tensor
    conv: torch.Tensor | None = None
    extra: torch.Tensor | None = None


class Mixer(nn.Module):
    causal: bool = True
    state_class: type | None = None  # the state dataclass this mixer returns (None: no state)

    def __init__(self, d_model: int):
        super().__init__()
        if not isinstance(d_model, int) or d_model <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        self.d_model = d_model
        self.aux_loss: torch.Tensor | None = None

    # ---- validation shared by every mixer -------------------------------------------------
    def check_input(self, x, mask, state):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"x must be a torch.Tensor of shape [B, T, {self.d_model}], got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"x must have shape [B, T, {self.d_model}] (rank 3), got shape {tuple(x.shape)}")
        if x.shape[-1] != self.d_model:
            raise ValueError(
                f"x must have shape [B, T, {self.d_model}]: last dimension is {x.shape[-1]}, expected {self.d_model}"
            )
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.shape[1] == 0:
            raise ValueError("x must have at least one time step (T >= 1)")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
                raise ValueError(f"mask must be a bool tensor of shape [B, T] = {tuple(x.shape[:2])}, got {got}")
            if tuple(mask.shape) != tuple(x.shape[:2]):
                raise ValueError(
                    f"mask must have shape [B, T] = {tuple(x.shape[:2])}, got {tuple(mask.shape)}"
                )
            card = getattr(type(self), "card", None)
            if card is not None and not card.padding:
                raise ValueError(f"{type(self).__name__} does not support a padding mask")
        if state is not None:
            if not self.causal:
                raise ValueError(
                    f"{type(self).__name__} is not causal (bidirectional): it cannot continue from a state"
                )
            if self.state_class is None or not isinstance(state, self.state_class):
                want = self.state_class.__name__ if self.state_class else "no state"
                raise ValueError(f"state must be a {want} returned by this mixer, got {type(state).__name__}")
            if state.batch_size() != x.shape[0]:
                raise ValueError(
                    f"state holds batch size {state.batch_size()}, but x has batch size {x.shape[0]}"
                )
            self.check_state(state)

    def check_state(self, state):
        """Subclasses check that a state's shapes match this mixer (raise ValueError otherwise)."""

    def forward(self, x, *, mask=None, state=None, return_state=False):
        self.check_input(x, mask, state)
        if return_state and not self.causal:
            raise ValueError(f"{type(self).__name__} is not causal: it has no state to return")
        if mask is not None and bool(mask.all()):
            mask = None
        y, new_state = self._forward(x, mask, state, return_state)
        return (y, new_state) if return_state else y

    def _forward(self, x, mask, state, return_state):
        raise NotImplementedError

    def state_bytes(self, seq_len: int) -> int:
        """Bytes one sequence keeps at inference after seq_len tokens (from the card, this instance's sizes)."""
        return int(type(self).card.state_bytes(self.d_model, getattr(self, "n_heads", 1), seq_len))

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"


def zero_padded(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Zero the padded time steps of x [B, T, ...] (mask [B, T], True = real)."""
    if mask is None:
        return x
    return x * mask.view(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)


def check_heads(d_model: int, n_heads: int, head_dim: int | None = None) -> int:
    """Validate a head split and return head_dim."""
    if n_heads <= 0:
        raise ValueError(f"n_heads must be positive, got {n_heads}")
    if head_dim is None:
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        head_dim = d_model // n_heads
    return head_dim
