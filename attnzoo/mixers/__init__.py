"""Token mixers over [B, T, d_model]; importing this package registers them all."""

from attnzoo.mixers.base import Mixer, MixerState, RecurrentState
from attnzoo.mixers import softmax, gated_softmax, sliding_window  # noqa: F401  (registration)

__all__ = ["Mixer", "MixerState", "RecurrentState"]
