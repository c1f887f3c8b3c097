"""Choosing an implementation: impl = "auto" | "reference" | "torch" | "triton"."""

from __future__ import annotations

import os

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
