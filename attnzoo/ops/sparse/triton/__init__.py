"""Triton kernels of block-sparse attention: forward.py, backward.py, decode.py (attention.py wraps them) and the
fused block selection, block_select.py."""

from attnzoo.ops.common.dispatch import triton_interpret


def _patch_interpreter():
    """Loop bounds loaded from memory (the block counts) need the interpreter fix that the linear family's
    Triton code carries (numpy >= 2.4 refuses int() of a 1-element array); it is being moved, so look in
    both places (interpreter only, for CPU tests)."""
    import importlib

    for name in ("attnzoo.ops.common.triton", "attnzoo.ops.linear.triton.api", "attnzoo.ops.linear.triton"):
        try:
            fn = getattr(importlib.import_module(name), "_patch_interpreter_index", None)
        except ImportError:
            continue
        if fn is not None:
            return fn()
    raise ImportError("attnzoo's Triton interpreter patch (_patch_interpreter_index) was not found")


if triton_interpret():
    _patch_interpreter()
