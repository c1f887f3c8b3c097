"""attnzoo: attention mechanisms and their rivals behind one contract.

    import attnzoo
    m = attnzoo.build("gated_softmax", d_model=64, n_heads=4)
    y = m(x)                                   # x [B, T, 64] -> y [B, T, 64]
    y, state = m(x, return_state=True)         # causal mixers continue from a state
"""

__version__ = "0.1.0"

from attnzoo.mixers.base import set_check_finite  # noqa: E402
from attnzoo.registry import Card, Paper, build, get_card, get_class, list_mixers, register  # noqa: E402

__all__ = ["__version__", "Card", "Paper", "build", "get_card", "get_class", "list_mixers", "register",
           "set_check_finite"]
