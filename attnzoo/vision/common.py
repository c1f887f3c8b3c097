"""Shared input checks for the vision modules ([B, H, W, C] feature maps)."""

from __future__ import annotations

import torch


def check_image(x, channels: int, name: str = "x") -> None:
    """Raise ValueError unless x is a floating tensor [B, H, W, channels]."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, H, W, {channels}], got {type(x).__name__}")  # noqa: TRY004
    if x.dim() != 4:
        raise ValueError(f"{name} must have shape [B, H, W, {channels}] (rank 4), got shape {tuple(x.shape)}")
    if x.shape[-1] != channels:
        raise ValueError(
            f"{name} must have shape [B, H, W, {channels}]: last dimension is {x.shape[-1]}, expected {channels}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_divisible(H: int, W: int, size: int, what: str) -> None:
    if H % size or W % size:
        raise ValueError(f"H and W must be divisible by the {what} ({size}), got H={H}, W={W}")
