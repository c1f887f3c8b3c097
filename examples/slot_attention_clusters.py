"""Slot Attention learns to find the centres of point clusters (a set-prediction task).

Task: x [B, N, 2] = N points from 3 Gaussian clusters with random centres; 3 slots each predict a
centre (linear read-out) trained with the permutation-invariant Chamfer loss. Prints the
validation Chamfer distance vs predicting the mean of all points for every slot, and the purity
of the slot assignment (argmax over slots of the attention) against the true clusters.

    python examples/slot_attention_clusters.py            # ~30 s on a 2-core CPU
    python examples/slot_attention_clusters.py --small    # a few seconds (smoke test)
"""

from __future__ import annotations

import time

import torch
from torch import nn

from _common import example_args, fit, report
from attnzoo.vision.slot_attention import SlotAttention


def make_batch(batch: int, per_cluster: int, generator: torch.Generator, k: int = 3):
    centres = torch.rand(batch, k, 2, generator=generator) * 6 - 3
    labels = torch.arange(k).repeat_interleave(per_cluster).expand(batch, -1)
    pts = centres[:, labels[0]] + 0.3 * torch.randn(batch, k * per_cluster, 2, generator=generator)
    return pts, centres, labels


def chamfer(pred, true):
    d = torch.cdist(pred, true)  # [B, K, K]
    return (d.min(2).values.mean() + d.min(1).values.mean()) / 2


class Model(nn.Module):
    def __init__(self, k: int):
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32))
        self.slots = SlotAttention(34, slot_dim=32, n_slots=k, iters=3, mlp_hidden=64)
        self.read = nn.Linear(32, 2)

    def forward(self, x, generator=None):
        slots, attn = self.slots(torch.cat([self.embed(x), x], -1), generator=generator)
        return self.read(slots), attn


def purity(attn, labels):
    assign = attn.argmax(1)  # [B, N] slot per point
    k = attn.shape[1]
    hits = 0
    for c in range(k):
        sel = assign == c
        counts = torch.stack([(sel & (labels == j)).sum(1) for j in range(k)], -1)  # [B, k]
        hits += counts.max(-1).values.sum()
    return (hits / labels.numel()).item()


def main(argv=None) -> dict:
    args = example_args(__doc__, argv, default_steps=600, small_steps=10)
    batch = 8 if args.small else 64
    g = torch.Generator().manual_seed(args.seed)
    model = Model(3)
    xv, cv, lv = make_batch(256, 8, torch.Generator().manual_seed(1234))
    baseline = chamfer(xv.mean(1, keepdim=True).expand(-1, 3, -1), cv).item()
    t0 = time.time()
    fit(model, lambda: make_batch(batch, 8, g), lambda x, c, _: chamfer(model(x, generator=g)[0], c),
        steps=args.steps, lr=2e-3)
    with torch.no_grad():
        pred, attn = model(xv, generator=torch.Generator().manual_seed(7))
    dist, pur = chamfer(pred, cv).item(), purity(attn, lv)
    learned = dist < 0.5 * baseline
    report("slot_attention_clusters", steps=args.steps, t0=t0, result=f"validation Chamfer {dist:.3f} vs "
           f"mean-of-points baseline {baseline:.3f}; assignment purity {pur:.2f} (chance ~0.33)", learned=learned)
    return {"chamfer": dist, "baseline": baseline, "purity": pur, "learned": learned}

if __name__ == "__main__":
    main()
