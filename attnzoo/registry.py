"""The registry: mixer name -> class, with a Card describing the mechanism.

    @register("softmax", card=Card(...))
    class SoftmaxAttention(Mixer): ...

    attnzoo.build("softmax", d_model=128, n_heads=4)
    attnzoo.list_mixers()            # sorted names
    attnzoo.get_card("softmax")      # the Card
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from collections.abc import Callable

from attnzoo.introspect import constructor_defaults

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

    state_bytes(d_model, n_heads, seq_len, **named) -> bytes one sequence's state holds after seq_len
    tokens: every tensor of the state the mixer returns (fp32 matrices, KV caches with their
    bool/int64 bookkeeping). Its keyword parameters name the constructor arguments it depends on
    (e.g. `n_kv_heads`, `window`) and default to the constructor's defaults; `bytes_for` (and
    `registry.state_bytes`, `Mixer.state_bytes`) pass the mixer's own values, so the card is the
    one source of a mixer's state size. The zoo plots quality against it; tests/test_registry.py
    holds it against the state each mixer really returns.
    causal: y[:, t] depends only on x[:, :t+1] for the default-built mixer (the class reads it from here).
    limits: conformance properties the mixer does not have, mapped to the reason; the
    conformance suite then checks the declaration instead of the property.
    example_kwargs: constructor arguments that make a small instance (tests, demos).
    claim: the paper's main claim in one sentence (the docs page shows it).
    tokens_read_per_step(seq_len, **named) / kv_read_fraction(seq_len, **named): decode cost facts
    for bench/cost.py where a step reads less than the whole cache (cached tokens read; share of
    the cache read); keyword parameters as for state_bytes. `decode_cost_fact` calls them.
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
    claim: str = ""
    tokens_read_per_step: Callable[..., int] | None = None
    kv_read_fraction: Callable[..., float] | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        unknown = set(self.limits) - set(PROPERTIES)
        if unknown:
            raise ValueError(f"limits keys must be among {PROPERTIES}, got {sorted(unknown)}")

    def bytes_for(self, seq_len: int, *, d_model: int, **config) -> int:
        """state_bytes for a mixer of width d_model built with `config` (its constructor arguments;
        those state_bytes does not name are ignored, n_heads defaults to 1)."""
        kw = _named(self.state_bytes, 3, config)
        return int(self.state_bytes(d_model, config.get("n_heads") or 1, seq_len, **kw))

    def decode_cost_fact(self, fact: str, seq_len: int, **config):
        """tokens_read_per_step or kv_read_fraction at seq_len for `config` (None if the card has none)."""
        fn = getattr(self, fact)
        return None if fn is None else fn(seq_len, **_named(fn, 1, config))

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


def _named(fn, n_positional: int, config: dict) -> dict:
    """The entries of config that fn names as parameters after its first n_positional ones."""
    params = list(inspect.signature(fn).parameters.values())[n_positional:]
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {k: v for k, v in config.items() if k in names}


def register(name: str, *, card: Card):
    """Class decorator: register a mixer class under `name` with its Card."""

    def deco(cls):
        if name in _REGISTRY and _REGISTRY[name][0] is not cls:
            raise ValueError(f"mixer name {name!r} is already registered by {_REGISTRY[name][0].__name__}")
        _REGISTRY[name] = (cls, card)
        cls.registry_name = name
        cls.card = card
        cls.causal = card.causal  # one source: the card (an instance may set its own, e.g. prefix_len=0)
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


def state_bytes(name: str, seq_len: int, *, d_model: int, **kwargs) -> int:
    """Bytes one sequence's state holds after seq_len tokens for `build(name, d_model=..., **kwargs)`,
    from the card (constructor defaults fill the kwargs not given)."""
    cls, card = _lookup(name)
    return card.bytes_for(seq_len, d_model=d_model, **{**constructor_defaults(cls), **kwargs})


def list_mixers(family: str | None = None) -> list[str]:
    _ensure_loaded()
    return sorted(n for n, (_, c) in _REGISTRY.items() if family is None or c.family == family)
