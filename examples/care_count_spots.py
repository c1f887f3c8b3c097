"""Two CARE blocks (memory handed from the first to the second) learn to count bright spots.

Task: x [B, 16, 16, 3] = noise + 1..4 bright 2×2 spots of a random colour; label = number of
spots - 1 (4 classes, chance 25%). Model: linear embedding -> CARE block -> CARE block (reading
the first block's memory) -> mean pool -> linear classifier. Prints validation accuracy.

    python examples/care_count_spots.py            # ~30-60 s on a 2-core CPU
    python examples/care_count_spots.py --small    # a few seconds (smoke test)
"""

from __future__ import annotations

import time

import torch
from torch import nn

from _common import example_args, fit, report
from attnzoo.vision.care import CAREBlock


def make_batch(batch: int, size: int, generator: torch.Generator):
    x = torch.randn(batch, size, size, 3, generator=generator) * 0.2
    labels = torch.randint(0, 4, (batch,), generator=generator)
    for b in range(batch):
        cells = torch.randperm((size // 4) ** 2, generator=generator)[: int(labels[b]) + 1]
        for c in cells.tolist():
            r, col = divmod(c, size // 4)
            colour = torch.rand(3, generator=generator) + 0.5
            x[b, 4 * r + 1: 4 * r + 3, 4 * col + 1: 4 * col + 3] += colour
    return x, labels


class Model(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.block1 = CAREBlock(dim, n_heads=2, kernel_size=3, memory_dim=dim // 2)
        self.block2 = CAREBlock(dim, n_heads=2, kernel_size=3, memory_dim=dim // 2)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        h, memory = self.block1(self.embed(x))
        h, _ = self.block2(h, memory)
        return self.head(h.mean((1, 2)))


def main(argv=None) -> dict:
    args = example_args(__doc__, argv, default_steps=250, small_steps=5)
    size, batch = (8, 4) if args.small else (16, 32)
    g = torch.Generator().manual_seed(args.seed)
    model = Model(24)
    xv, yv = make_batch(256, size, torch.Generator().manual_seed(1234))
    t0 = time.time()
    fit(model, lambda: make_batch(batch, size, g), lambda x, y: nn.functional.cross_entropy(model(x), y),
        steps=args.steps, lr=3e-3, optimizer="adamw")
    with torch.no_grad():
        acc = (model(xv).argmax(-1) == yv).float().mean().item()
    learned = acc > 0.8
    report("care_count_spots", steps=args.steps, t0=t0, result=f"validation accuracy {acc:.3f} (chance 0.25)",
           learned=learned)
    return {"accuracy": acc, "learned": learned}

if __name__ == "__main__":
    main()
