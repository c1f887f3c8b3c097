"""Atomic checkpoints: weights as safetensors, optimizer state and progress beside them.

A checkpoint is a folder `<dir>/step-<N>/` holding `model.safetensors` and `trainer.pt`. It is
written under a temporary name and renamed into place (os.replace), then `<dir>/latest.json`
is rewritten the same way (temp file + os.replace) to point at it; so a crash at any moment
leaves the previous checkpoint whole, and `latest.json` never names a half-written folder.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import load_model, save_model
from torch import nn

LATEST = "latest.json"


def _atomic_write_text(path: str, text: str):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_checkpoint(directory: str, *, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    extra: dict | None = None, keep: int = 1) -> str:
    """Write step-<step>/ atomically and point latest.json at it; keep the newest `keep` folders."""
    os.makedirs(directory, exist_ok=True)
    name = f"step-{step:08d}"
    final = os.path.join(directory, name)
    tmp = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    save_model(model, os.path.join(tmp, "model.safetensors"), metadata={"step": str(step)})
    torch.save({"optimizer": optimizer.state_dict(), "step": step, "extra": extra or {}},
               os.path.join(tmp, "trainer.pt"))
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(os.path.join(directory, LATEST), json.dumps({"checkpoint": name, "step": step}))
    old = sorted(d for d in os.listdir(directory) if d.startswith("step-") and d != name)
    for d in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(os.path.join(directory, d), ignore_errors=True)
    return final


def latest_checkpoint(directory: str) -> str | None:
    path = os.path.join(directory, LATEST)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        name = json.load(f)["checkpoint"]
    full = os.path.join(directory, name)
    return full if os.path.isdir(full) else None


def load_checkpoint(path: str, *, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    map_location="cpu") -> dict:
    """Load weights (strict) and, if given, the optimizer state; return {'step', 'extra'}."""
    missing, unexpected = load_model(model, os.path.join(path, "model.safetensors"), strict=False,
                                     device=str(map_location))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}")
    state = torch.load(os.path.join(path, "trainer.pt"), map_location=map_location, weights_only=False)
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    return {"step": state["step"], "extra": state["extra"]}
