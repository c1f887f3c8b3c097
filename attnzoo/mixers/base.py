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
- A state is tagged with the mixer that made it (registered class and constructor configuration,
  `Mixer.state_tag`); a state made by another mixer, or by this class with another configuration,
  is refused with a ValueError. A state built by hand (no tag) is checked by class and shapes only.
- B >= 1 and T >= 1. x's dtype must be the parameters' dtype (a bf16 x for a float32 mixer is an
  error naming both), except inside a `torch.autocast` region on x's device, where autocast
  decides the operands' precision as it does for torch's own layers.
- Non-finite inputs: padded positions may hold anything (inf, NaN): they are replaced by zeros
  with `torch.where` before the mixer sees them. A NaN or inf at a real position is not checked
  by default and can reach every output of that sequence, earlier steps included (a chunked
  path multiplies masked-out scores, 0 · NaN = NaN); `set_check_finite(True)` (or
  `mixer.check_finite = True`) makes forward raise a ValueError instead.

Subclasses implement `_forward(x, mask, state, return_state)` and return (y, new_state);
`forward` validates the input first and so gives every mixer the same errors.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields

import torch
from torch import nn

from attnzoo.introspect import constructor_defaults

STATE_TAG = "_attnzoo_owner"     # the attribute a mixer's state carries: Mixer.state_tag of its maker
_CHECK_FINITE = [False]


def set_check_finite(enabled: bool = True):
    """Make every mixer (whose own `check_finite` is None) reject NaN/inf at real input positions."""
    _CHECK_FINITE[0] = bool(enabled)


def drop_padding(t: torch.Tensor | None, mask: torch.Tensor | None):
    """t [B, T, ...] with padded steps (mask [B, T] False) set to zero by `torch.where`, so that an inf
    or NaN there cannot leak (multiplying by the mask would turn it into NaN); None passes through."""
    if t is None or mask is None:
        return t
    return torch.where(mask.view(*mask.shape, *([1] * (t.dim() - 2))), t, t.new_zeros(()))


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

        out = type(self)(**kw)
        if hasattr(self, STATE_TAG):
            object.__setattr__(out, STATE_TAG, getattr(self, STATE_TAG))
        return out

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
    check_finite: bool | None = None  # None: follow set_check_finite (off by default)
    # constructor arguments that do not change what a state means (left out of state_tag)
    state_tag_ignore: tuple = ("impl",)

    def __init_subclass__(cls, **kwargs):
        """Every subclass records its constructor arguments (`self.config`) from the outermost call."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_records_config", False):
            cls.__init__ = _recording_init(init)

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
        if x.shape[0] == 0:
            raise ValueError(f"x must hold at least one sequence (B >= 1), got shape {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError("x must have at least one time step (T >= 1)")
        self.check_dtype(x)
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
            owner = getattr(state, STATE_TAG, None)
            if owner is not None and owner != self.state_tag:
                raise ValueError(f"state was made by another mixer: {owner}; this mixer is {self.state_tag}")
            if state.batch_size() != x.shape[0]:
                raise ValueError(
                    f"state holds batch size {state.batch_size()}, but x has batch size {x.shape[0]}"
                )
            self.check_state(state)

    def check_state(self, state):
        """Subclasses check that a state's shapes match this mixer (raise ValueError otherwise)."""

    def check_dtype(self, x):
        """x's dtype must be the parameters' (outside autocast): one rule, one error, for every mixer."""
        dev = x.device.type
        if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
            return
        p = next((p for p in self.parameters() if p.is_floating_point()), None)
        if p is not None and p.dtype != x.dtype:
            raise ValueError(
                f"x is {x.dtype} but {type(self).__name__}'s parameters are {p.dtype}: convert one to the other "
                f"(e.g. mixer.to({x.dtype})) or run under torch.autocast"
            )

    def check_values(self, x, mask):
        on = self.check_finite if self.check_finite is not None else _CHECK_FINITE[0]
        if on:
            real = x if mask is None else x[mask]
            if not bool(torch.isfinite(real).all()):
                raise ValueError(f"x holds NaN or inf at real (unpadded) positions ({type(self).__name__}, "
                                 f"check_finite is on)")

    @property
    def config(self) -> dict:
        """The constructor arguments this mixer was built with (defaults filled in)."""
        return dict(self.__dict__.get("_config") or {})

    @property
    def state_tag(self) -> str:
        """Who makes this mixer's states: the registered name (or class) and its configuration."""
        tag = self.__dict__.get("_state_tag")
        if tag is None:
            cfg = ", ".join(f"{k}={v!r}" for k, v in sorted(self.config.items()) if k not in self.state_tag_ignore)
            name = getattr(type(self), "registry_name", type(self).__qualname__)
            tag = f"{name}({cfg})"
            object.__setattr__(self, "_state_tag", tag)
        return tag

    def forward(self, x, *, mask=None, state=None, return_state=False):
        self.check_input(x, mask, state)
        if return_state and not self.causal:
            raise ValueError(f"{type(self).__name__} is not causal: it has no state to return")
        if mask is not None and bool(mask.all()):
            mask = None
        self.check_values(x, mask)
        if mask is not None:  # whatever the padding holds (inf, NaN), the mixer sees zeros there
            x = drop_padding(x, mask)
        y, new_state = self._forward(x, mask, state, return_state)
        if new_state is not None:
            object.__setattr__(new_state, STATE_TAG, self.state_tag)
        return (y, new_state) if return_state else y

    def _forward(self, x, mask, state, return_state):
        raise NotImplementedError

    def state_bytes(self, seq_len: int) -> int:
        """Bytes one sequence's state holds after seq_len tokens: the card's formula for this mixer's
        constructor arguments (`Card.bytes_for`), the one source of the number."""
        cfg = {**constructor_defaults(type(self)), **self.config}
        cfg.pop("d_model", None)
        return type(self).card.bytes_for(seq_len, d_model=self.d_model, **cfg)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}"


def _recording_init(init):
    """Wrap a Mixer subclass's __init__ so that the outermost call records its bound arguments."""
    sig = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        outer = "_config" not in self.__dict__
        if outer:
            object.__setattr__(self, "_config", None)
        init(self, *args, **kwargs)
        if outer:
            bound = sig.bind(self, *args, **kwargs)
            bound.apply_defaults()
            cfg = {}
            for k, v in list(bound.arguments.items())[1:]:
                kind = sig.parameters[k].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    cfg.update(v)
                elif kind is not inspect.Parameter.VAR_POSITIONAL:
                    cfg[k] = v
            object.__setattr__(self, "_config", cfg)

    __init__._records_config = True
    return __init__


def check_heads(d_model: int, n_heads: int, head_dim: int | None = None) -> int:
    """Validate a head split and return head_dim."""
    if n_heads <= 0:
        raise ValueError(f"n_heads must be positive, got {n_heads}")
    if head_dim is None:
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        head_dim = d_model // n_heads
    return head_dim
