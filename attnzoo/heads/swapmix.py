"""SwapMix: context-swap perturbation for set-of-object models (Gupta et al. 2022, "SwapMix:
Diagnosing and Regularizing the Over-Reliance on Visual Context in Visual Question Answering",
arXiv:2204.02285).

    objects [B, N, d], relevant [B, N] bool (objects the question is about), bank [M, d]
    swapmix: each real irrelevant object is replaced, with probability p, by a random bank entry
    context reliance: the fraction of examples whose predicted answer changes under at least one
    of n_swaps random swaps (diagnosis); used as augmentation, swapmix makes the model ignore
    irrelevant context.
"""

from __future__ import annotations

import torch


def swapmix(objects, relevant, bank, *, p: float = 1.0, mask=None, dims=None, generator=None):
    """Return a copy of objects with irrelevant (real) objects swapped for random bank features.

    dims: feature indices to swap (default all); the others are kept, e.g. the object's class, so
    that a swap changes an object's attributes without creating a new object the question is about.
    """
    if objects.dim() != 3 or relevant.shape != objects.shape[:2] or relevant.dtype != torch.bool:
        raise ValueError(f"objects must be [B, N, d] and relevant bool [B, N]; got {tuple(objects.shape)}, "
                         f"{relevant.dtype} {tuple(relevant.shape)}")
    if bank.dim() != 2 or bank.shape[1] != objects.shape[2]:
        raise ValueError(f"bank must be [M, d] with d = {objects.shape[2]}, got {tuple(bank.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    B, N, _ = objects.shape
    swap = ~relevant & (torch.rand(B, N, generator=generator, device=objects.device) < p)
    if mask is not None:
        swap &= mask
    pick = torch.randint(0, bank.shape[0], (B, N), generator=generator, device=objects.device)
    new = bank[pick].to(objects.dtype)
    if dims is not None:
        keep = torch.ones(objects.shape[-1], dtype=torch.bool, device=objects.device)
        keep[dims] = False
        new = torch.where(keep, objects, new)
    return torch.where(swap[..., None], new, objects)


@torch.no_grad()
def context_reliance(predict, objects, relevant, bank, *, n_swaps: int = 5, p: float = 1.0, mask=None,
                     dims=None, generator=None) -> float:
    """Fraction of examples whose prediction `predict(objects) -> [B]` changes under some swap."""
    base = predict(objects)
    changed = torch.zeros_like(base, dtype=torch.bool)
    for _ in range(n_swaps):
        changed |= predict(swapmix(objects, relevant, bank, p=p, mask=mask, dims=dims, generator=generator)) != base
    return changed.float().mean().item()
