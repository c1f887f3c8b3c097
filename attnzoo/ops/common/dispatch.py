"""Choosing an implementation: impl = "auto" | "reference" | "torch" | "triton"."""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading

import torch

IMPLS = ("auto", "reference", "torch", "triton")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str, *tensors: torch.Tensor, triton_supported: bool = False) -> str:
    """Return the concrete implementation for `impl`.

    "auto" picks "triton" when every tensor is on CUDA, Triton imports and the caller says
    the shape is supported (`triton_supported`); else "torch".
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if impl != "auto":
        if impl == "triton" and not triton_available():
            raise ValueError('impl="triton" needs the triton package (pip install "attnzoo[triton]")')
        return impl
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if on_cuda and triton_supported and triton_available():
        return "triton"
    return "torch"


# Op overrides: a context (attnzoo.parallel.sequence_parallel) can replace an op by another function
# for the code it runs; an op asks `op_override(name)` after checking its inputs. Ops never import the
# code that overrides them. Names in use: "gated_linear_attention", "delta_rule", "softmax_attention",
# "conv_cache" (the previous inputs of a causal conv / token shift), "token_positions" (an offset).
# The table lives in a ContextVar (each thread and task sees its own); _ACTIVE counts the tables set
# in any thread, so with none set `op_override` returns None without reading the ContextVar, which
# torch.compile cannot trace (a graph break in every op): dynamo guards on the plain int instead.
_OP_OVERRIDES: contextvars.ContextVar = contextvars.ContextVar("attnzoo_op_overrides", default=None)
_ACTIVE = 0
_ACTIVE_LOCK = threading.Lock()


def op_override(name: str):
    """The function that replaces op `name` in the current context, or None (the op runs as usual)."""
    if _ACTIVE == 0:
        return None
    table = _OP_OVERRIDES.get()
    return None if table is None else table.get(name)


def _count_active(delta: int) -> None:
    global _ACTIVE
    with _ACTIVE_LOCK:
        _ACTIVE += delta


@contextlib.contextmanager
def op_overrides(table: dict | None):
    """Within the block, `op_override(name)` returns table[name] (None: no override at all)."""
    token = _OP_OVERRIDES.set(table)
    if table is not None:
        _count_active(1)
    try:
        yield
    finally:
        if table is not None:
            _count_active(-1)
        _OP_OVERRIDES.reset(token)
