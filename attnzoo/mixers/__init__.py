"""Token mixers over [B, T, d_model]; importing this package registers them all.

Every module in this package is imported (one mechanism per file, each registering itself), so a
new mixer needs no edit here.
"""

import importlib
import pkgutil

from attnzoo.mixers.base import Mixer, MixerState, RecurrentState

_HELPERS = {"base", "layers"}

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _mod not in _HELPERS and not _mod.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["Mixer", "MixerState", "RecurrentState"]
