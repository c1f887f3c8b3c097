"""Mixer patterns: a registered mixer name or a hybrid pattern ("gla*3+softmax") expanded into one name
per layer. Below the models (lm, encoder, sequence_classifier) and their save/load (pretrained)."""

from __future__ import annotations

from attnzoo.registry import get_card


def pattern_unit(mixer) -> list[str]:
    """The repeating unit of a mixer name or hybrid pattern ("gla*3,softmax" -> 3 x gla, softmax),
    every name checked against the registry."""
    if isinstance(mixer, str):
        items = []
        for part in mixer.replace("+", ",").split(","):
            part = part.strip()
            if not part:
                raise ValueError(f"empty entry in mixer pattern {mixer!r}")
            name, _, count = part.partition("*")
            items.append((name.strip(), int(count) if count else 1))
    else:
        items = [(str(n), int(c)) for n, c in mixer]
    unit = [name for name, count in items for _ in range(count)]
    for name in set(unit):
        get_card(name)  # raises ValueError with close matches for an unknown name
    if not unit:
        raise ValueError(f"mixer pattern {mixer!r} names no mixer")
    return unit


def parse_pattern(mixer, n_layers: int) -> list[str]:
    """Expand a mixer name or hybrid pattern into one registered name per layer."""
    unit = pattern_unit(mixer)
    if n_layers <= 0 or n_layers % len(unit):
        raise ValueError(f"n_layers={n_layers} must be a positive multiple of the pattern length {len(unit)}")
    return unit * (n_layers // len(unit))
