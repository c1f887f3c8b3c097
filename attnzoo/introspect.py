"""Reading a class's constructor: shared by the registry (cards, docs) and the mixers (state bytes),
below both so that neither imports the other."""

from __future__ import annotations

import inspect


def constructor_defaults(cls: type) -> dict:
    """Defaults of cls's constructor keyword arguments, a base class's filling in for `**kw`."""
    out: dict = {}
    for klass in reversed(cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        for p in list(inspect.signature(init).parameters.values())[1:]:
            if p.default is not p.empty:
                out[p.name] = p.default
    return out
