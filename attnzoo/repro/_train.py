"""Shared by studies: an Adam/MSE loop on sampled batches (icl-regression, ar-forecast) and a CPU thread cap.

The studies' models are small and overhead-bound: on a shared 2-core machine one torch thread is
several times faster than two (measured: 100 steps of a one-layer ICL model, 2.2 s -> 15.9 s wall
with 2 threads under load), so `cpu_threads(1)` wraps a study's run on CPU.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn


def fit_mse(model: nn.Module, sample, *, steps: int, lr: float, device: str = "cpu", min_lr_ratio: float = 0.1,
            log=None) -> list[float]:
    """Train model(x) -> ŷ [N] on MSE; sample(step) -> (x, y) gives each step's batch.
    Adam, cosine decay from lr to min_lr_ratio·lr. Returns the training loss per step."""
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * step / steps)))
        x, y = sample(step)
        loss = ((model(x.to(device)) - y.to(device)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, steps // 4) == 0:
            log(f"step {step + 1}/{steps} mse {sum(losses[-50:]) / len(losses[-50:]):.4g}")
    model.eval()
    return losses


@torch.no_grad()
def mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: str = "cpu", batch: int = 4096) -> float:
    total = 0.0
    for s in range(0, len(x), batch):
        total += float(((model(x[s:s + batch].to(device)) - y[s:s + batch].to(device)) ** 2).sum())
    return total / len(x)


def device_note(device: str) -> str:
    """The device as a study's conditions column states it (on CPU the thread cap of `cpu_threads`)."""
    return "cpu, 1 torch thread" if str(device).startswith("cpu") else str(device)


@contextlib.contextmanager
def cpu_threads(device: str, n: int = 1):
    """Cap torch's intra-op threads at n while on CPU (restored on exit); a no-op on other devices. These
    models are too small for two threads to pay, and on a shared, loaded 2-core machine two threads per
    process fight (measured: 4-layer d=32 steps of 50 ms on one thread, 0.5-1 s on two at load 9)."""
    if not str(device).startswith("cpu"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)
