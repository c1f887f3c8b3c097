"""The registry: mixer name -> class, with a Card describing the mechanism.

    @register("softmax", card=Card(...))
    class SoftmaxAttention(Mixer): ...

    attnzoo.build("softmax", d_model=128, n_heads=4)
    attnzoo.list_mixers()            # sorted names
    attnzoo.get_card("softmax")      # the Card
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from collections.abc import Callable

FAMILIES = (
    "softmax", "linear", "recurrent", "ssm", "conv", "sparse", "routed", "pooling", "vision", "hybrid",
)

# Conformance properties a card may declare it does not have (with the reason).
PROPERTIES = ("causality", "decode", "padding", "batch_independence", "float64")


@dataclass(frozen=True)
class Paper:
    title: str
    authors: str
    year: int
    arxiv: str = ""

    def cite(self) -> str:
        ax = f", arXiv:{self.arxiv}" if self.arxiv else ""
        return f"{self.authors} ({self.year}){ax}"


@dataclass(frozen=True)
class Card:
    """What a mixer is: the paper, its family, its cost and what it can do.

    state_bytes(d_model, n_heads, seq_len) -> bytes a sequence keeps at inference (fp32 state,
    or bf16/fp32 KV cache as the mixer stores it); used by the zoo to plot quality vs state size.
    limits: conformance properties the mixer does not have, mapped to the reason; the
    conformance suite then checks the declaration instead of the property.
    example_kwargs: constructor arguments that make a small instance (tests, demos).
    """

    title: str
    paper: Paper
    family: str
    complexity: str
    state_bytes: Callable[[int, int, int], int]
    causal: bool = True
    bidirectional: bool = False
    decode: bool = True
    padding: bool = True
    limits: dict = field(default_factory=dict)
    example_kwargs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        unknown = set(self.limits) - set(PROPERTIES)
        if unknown:
            raise ValueError(f"limits keys must be among {PROPERTIES}, got {sorted(unknown)}")

    def capabilities(self) -> str:
        caps = []
        if self.causal:
            caps.append("causal")
        if self.bidirectional:
            caps.append("bidir")
        if self.decode:
            caps.append("decode")
        if self.padding:
            caps.append("mask")
        return ",".join(caps)


_REGISTRY: dict[str, tuple[type, Card]] = {}


def register(name: str, *, card: Card):
    """Class decorator: register a mixer class under `name` with its Card."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"mixer name {name!r} is already registered by {_REGISTRY[name][0].__name__}")
        _REGISTRY[name] = (cls, card)
        cls.registry_name = name
        cls.card = card
        return cls

    return deco


def _ensure_loaded():
    # importing the mixers package runs every @register
    import attnzoo.mixers  # noqa: F401


def _lookup(name: str) -> tuple[type, Card]:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown mixer {name!r}{hint} (registered: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]


def get_class(name: str) -> type:
    return _lookup(name)[0]


def get_card(name: str) -> Card:
    return _lookup(name)[1]


def build(name: str, *, d_model: int, **kwargs):
    """Build the registered mixer `name` for inputs of width d_model."""
    cls, _ = _lookup(name)
    return cls(d_model=d_model, **kwargs)


def list_mixers(family: str | None = None) -> list[str]:
    _ensure_loaded()
    return sorted(n for n, (_, c) in _REGISTRY.items() if family is None or c.family == family)
