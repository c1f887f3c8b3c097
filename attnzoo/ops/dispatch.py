"""Choosing an implementation: impl = "auto" | "reference" | "torch" | "triton"."""

from __future__ import annotations

import contextlib
import contextvars
import functools
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


def autocast_off(*tensors):
    """Context manager: autocast disabled on the device of the first tensor given (None skipped).

    An op computes in its own stated precision whatever the caller's autocast: under
    `torch.autocast` a matmul inside a float32 op would otherwise be run in bf16, or mix a bf16
    result into a float32 buffer (an error for in-place and out= calls). The op's entry point and
    a hand-written backward (called inside or outside an autocast region) run under this; inputs
    keep the dtypes they came with, so a Triton kernel still receives bf16 activations.
    """
    device = next((t.device.type for t in tensors if isinstance(t, torch.Tensor)), "cpu")
    if not torch.amp.is_autocast_available(device):  # e.g. meta tensors: no autocast to turn off
        return contextlib.nullcontext()
    return torch.autocast(device_type=device, enabled=False)


def without_autocast(fn):
    """Decorator: run `fn` under `autocast_off` of its tensor arguments (see there)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with autocast_off(*args, *kwargs.values()):
            return fn(*args, **kwargs)

    return wrapped


def autocast_operands(*tensors):
    """Mixed floating dtypes under torch.autocast made one: the autocast dtype of the region (what
    autocast gives a matmul's operands); tensors of one dtype, float64 ones, or no autocast on their
    device: unchanged (an op keeps computing in the precision its inputs state, see autocast_off).

    Under CUDA autocast a mixer's q, k, v can arrive in mixed dtypes (one came through an op that
    autocast keeps in float32: measured for mamba2 and lawcat on the H200), which the Triton kernels
    do not take, so those mixers fell to the torch path.
    """
    floats = [t for t in tensors if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if len({t.dtype for t in floats}) < 2 or any(t.dtype == torch.float64 for t in floats):
        return tensors
    device = floats[0].device.type
    if not torch.amp.is_autocast_available(device) or not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t for t in tensors)


# Op overrides: a context (attnzoo.parallel.sequence_parallel) can replace an op by another function
# for the code it runs; an op asks `op_override(name)` after checking its inputs. Ops never import the
# code that overrides them. Names in use: "gated_linear_attention", "delta_rule", "softmax_attention",
# "conv_cache" (the previous inputs of a causal conv / token shift), "token_positions" (an offset).
_OP_OVERRIDES: contextvars.ContextVar = contextvars.ContextVar("attnzoo_op_overrides", default=None)


def op_override(name: str):
    """The function that replaces op `name` in the current context, or None (the op runs as usual)."""
    table = _OP_OVERRIDES.get()
    return None if table is None else table.get(name)


@contextlib.contextmanager
def op_overrides(table: dict | None):
    """Within the block, `op_override(name)` returns table[name] (None: no override at all)."""
    token = _OP_OVERRIDES.set(table)
    try:
        yield
    finally:
        _OP_OVERRIDES.reset(token)
