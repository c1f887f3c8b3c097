"""A MaxViT block spreads global information: every pixel learns the image-wide mean.

Task: x [B, 16, 16, 3] random; target at every pixel = 16 · mean over the whole image of x[..., 0]
(variance 1). Block attention (4×4 windows) averages a window, grid attention (4×4 tokens at
stride 4) then averages across windows: two hops reach every pixel. A per-pixel MLP (the
no-attention baseline: predict 0) cannot do better than the target's variance.

    python examples/maxvit_global_mean.py            # ~30 s on a 2-core CPU
    python examples/maxvit_global_mean.py --small    # a few seconds (smoke test)
"""

from __future__ import annotations

import time

import torch
from torch import nn

from _common import example_args, fit, report, validation_mse
from attnzoo.vision.maxvit import MaxViTBlock


def make_batch(batch: int, size: int, generator: torch.Generator):
    x = torch.randn(batch, size, size, 3, generator=generator)
    y = x[..., 0].mean((1, 2), keepdim=True).expand(batch, size, size) * size
    return x, y


class Model(nn.Module):
    def __init__(self, dim: int, window: int):
        super().__init__()
        self.embed = nn.Linear(3, dim)
        self.block = MaxViTBlock(dim, n_heads=2, window_size=window, grid_size=window)
        self.out = nn.Linear(dim, 1)

    def forward(self, x):
        return self.out(self.block(self.embed(x))).squeeze(-1)


def main(argv=None) -> dict:
    args = example_args(__doc__, argv, default_steps=300, small_steps=15)
    size, window, batch = (4, 2, 4) if args.small else (16, 4, 32)
    g = torch.Generator().manual_seed(args.seed)
    model = Model(32, window)
    xv, yv = make_batch(128, size, torch.Generator().manual_seed(1234))
    baseline = yv.square().mean().item()
    t0 = time.time()
    fit(model, lambda: make_batch(batch, size, g), lambda x, y: (model(x) - y).square().mean(),
        steps=args.steps, lr=3e-3, optimizer="adamw")
    model.eval()
    mse = validation_mse(model, xv, yv)
    learned = mse < 0.1 * baseline
    report("maxvit_global_mean", steps=args.steps, t0=t0,
           result=f"validation MSE {mse:.4f} vs predict-zero baseline {baseline:.4f}", learned=learned)
    return {"mse": mse, "baseline": baseline, "learned": learned}

if __name__ == "__main__":
    main()
