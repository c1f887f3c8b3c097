"""HaloNet attention learns to copy a pixel from a fixed offset that crosses block borders.

Task: x [B, H, W, 4] (3 random channels + a constant 1), target y[i, j] = x[i-2, j+3, 0]
(0 outside the image). With block 8 and halo 3 every needed pixel lies in the query block's
window, often in the halo; the relative logits must learn the offset (-2, +3) and the zero
padding supplies the 0 outside the image.

    python examples/halo_shift_copy.py            # ~30 s on a 2-core CPU
    python examples/halo_shift_copy.py --small    # a few seconds (smoke test)
"""

from __future__ import annotations

import time

import torch
from torch import nn

from _common import example_args, fit, report, validation_mse
from attnzoo.vision.halo import HaloAttention


def make_batch(batch: int, size: int, generator: torch.Generator):
    x = torch.randn(batch, size, size, 4, generator=generator)
    x[..., 3] = 1.0
    src = torch.nn.functional.pad(x[..., 0], (0, 3, 2, 0))  # pad left/right of W, top/bottom of H
    y = src[:, :size, 3:]  # y[i, j] = x[i-2, j+3]
    return x, y


class Model(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.embed = nn.Linear(4, dim)
        self.attn = HaloAttention(dim, n_heads=2, block_size=8, halo_size=3)
        self.out = nn.Linear(dim, 1)

    def forward(self, x):
        return self.out(self.attn(self.embed(x))).squeeze(-1)


def main(argv=None) -> dict:
    args = example_args(__doc__, argv, default_steps=300, small_steps=5)
    size, batch = (8, 4) if args.small else (16, 16)
    g = torch.Generator().manual_seed(args.seed)
    model = Model(16)
    xv, yv = make_batch(64, size, torch.Generator().manual_seed(1234))
    baseline = yv.square().mean().item()  # predicting 0 everywhere
    t0 = time.time()
    fit(model, lambda: make_batch(batch, size, g), lambda x, y: (model(x) - y).square().mean(),
        steps=args.steps, lr=1e-2)
    mse = validation_mse(model, xv, yv)
    learned = mse < 0.1 * baseline
    report("halo_shift_copy", steps=args.steps, t0=t0,
           result=f"validation MSE {mse:.4f} vs predict-zero baseline {baseline:.4f}", learned=learned)
    return {"mse": mse, "baseline": baseline, "learned": learned}

if __name__ == "__main__":
    main()
