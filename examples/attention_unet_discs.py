"""A residual attention U-Net learns to segment discs and ignore squares of the same brightness.

Task: x [B, H, W, 1] = noise + 1-2 discs (the objects) + 1 square (a distractor); target mask =
the discs. Prints Dice and IoU on held-out images (IoU <= Dice always) and the mean gate value
inside vs outside the objects.

    python examples/attention_unet_discs.py            # ~30-60 s on a 2-core CPU
    python examples/attention_unet_discs.py --small    # a few seconds (smoke test)
"""

from __future__ import annotations

import time

import torch

from _common import example_args, fit, report
from attnzoo.vision.attention_gate import ResidualAttentionUNet


def make_batch(batch: int, size: int, generator: torch.Generator):
    r, c = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    x = torch.randn(batch, size, size, generator=generator) * 0.3
    mask = torch.zeros(batch, size, size)
    for b in range(batch):
        n = int(torch.randint(1, 3, (1,), generator=generator))
        for _ in range(n):
            cy, cx = torch.randint(2, size - 2, (2,), generator=generator).tolist()
            rad = 1.5 + float(torch.rand(1, generator=generator)) * size / 8
            mask[b] = torch.maximum(mask[b], (((r - cy) ** 2 + (c - cx) ** 2) <= rad**2).float())
        sy, sx = torch.randint(0, size - 4, (2,), generator=generator).tolist()
        sq = torch.zeros(size, size)
        sq[sy:sy + 4, sx:sx + 4] = 1.0
        x[b] += torch.maximum(mask[b], sq)
        mask[b] = mask[b] * (1 - sq)  # a square over a disc hides it
    return x[..., None], mask


def dice_iou(logits, mask):
    pred = (logits > 0).float()
    inter = (pred * mask).sum()
    dice = (2 * inter / (pred.sum() + mask.sum()).clamp_min(1)).item()
    iou = (inter / ((pred + mask) > 0).float().sum().clamp_min(1)).item()
    return dice, iou


def main(argv=None) -> dict:
    args = example_args(__doc__, argv, default_steps=200, small_steps=10)
    size, batch, base = (8, 4, 4) if args.small else (16, 16, 8)
    g = torch.Generator().manual_seed(args.seed)
    net = ResidualAttentionUNet(1, 1, base=base, depth=2)
    xv, mv = make_batch(64, size, torch.Generator().manual_seed(1234))
    t0 = time.time()
    fit(net, lambda: make_batch(batch, size, g),
        lambda x, m: torch.nn.functional.binary_cross_entropy_with_logits(net(x).squeeze(-1), m),
        steps=args.steps, lr=3e-3)
    net.eval()
    with torch.no_grad():
        logits = net(xv).squeeze(-1)
    dice, iou = dice_iou(logits, mv)
    alpha = net.alphas[-1].squeeze(-1)
    inside, outside = alpha[mv > 0].mean().item(), alpha[mv == 0].mean().item()
    learned = dice > 0.8
    report("attention_unet_discs", steps=args.steps, t0=t0, result=f"validation Dice {dice:.3f}, IoU {iou:.3f}; "
           f"gate mean inside objects {inside:.2f} vs outside {outside:.2f}", learned=learned)
    return {"dice": dice, "iou": iou, "learned": learned}

if __name__ == "__main__":
    main()
