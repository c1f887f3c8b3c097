"""Two CARE blocks (memory handed from the first to the second) learn to count bright spots.

Task: x [B, 16, 16, 3] = noise + 1..4 bright 2×2 spots of a random colour; label = number of
spots - 1 (4 classes, chance 25%). Model: linear embedding -> CARE block -> CARE block (reading
the first block's memory) -> mean pool -> linear classifier. Prints validation accuracy.

    python examples/care_count_spots.py            # ~30-60 s on a 2-core CPU
    python examples/care_count_spots.py --small    # a few seconds (smoke test)
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

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
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny run for the smoke test")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (small models: 1 is fastest)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = args.steps or (5 if args.small else 250)
    size, batch = (8, 4) if args.small else (16, 32)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    model = Model(24)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    xv, yv = make_batch(256, size, torch.Generator().manual_seed(1234))
    t0 = time.time()
    for _ in range(steps):
        x, y = make_batch(batch, size, g)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (model(xv).argmax(-1) == yv).float().mean().item()
    learned = acc > 0.8
    print(f"care_count_spots: {steps} steps in {time.time() - t0:.1f}s; validation accuracy {acc:.3f} "
          f"(chance 0.25) -> learned={learned}")
    return {"accuracy": acc, "learned": learned}


if __name__ == "__main__":
    main()
