"""Precision rules of the ops: what dtype an op computes in, and how autocast is kept out.

- A recurrent op keeps its state and does its arithmetic in float32, or float64 when any input
  is float64 (`compute_dtype`); its outputs come back in the input's dtype.
- An op computes in its own stated precision whatever the caller's autocast (`autocast_off`,
  `without_autocast`); only q, k, v of mixed dtypes are first made one (`autocast_operands`).
"""

from __future__ import annotations

import contextlib
import functools

import torch


def compute_dtype(*ts) -> torch.dtype:
    """float64 if any given tensor is float64, else float32 (None entries are skipped)."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in ts) else torch.float32


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
