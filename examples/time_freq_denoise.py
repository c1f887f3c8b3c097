"""A MambAttention time-frequency block learns to denoise a synthetic magnitude spectrogram.

Task: clean = 1-3 stationary tones (a constant-amplitude line along T at a random frequency bin,
with its first harmonic) ; noisy = clean + non-negative broadband noise. Input [B, 1, T, F] is
lifted to C channels by a 1×1 conv, passed through one TimeFrequencyBlock (shared time/frequency
attention + bidirectional Mamba on each axis) and mapped back to 1 channel to predict the clean
spectrogram. Prints the validation MSE vs the noisy input's MSE.

    python examples/time_freq_denoise.py            # ~30-60 s on a 2-core CPU
    python examples/time_freq_denoise.py --small    # a few seconds (smoke test)
"""

from __future__ import annotations

import time

import torch
from torch import nn

from _common import example_args, fit, report, validation_mse
from attnzoo.models.time_freq_block import TimeFrequencyBlock


def make_batch(batch: int, T: int, F: int, generator: torch.Generator):
    clean = torch.zeros(batch, 1, T, F)
    for b in range(batch):
        for _ in range(int(torch.randint(1, 4, (1,), generator=generator))):
            f = int(torch.randint(0, F // 2, (1,), generator=generator))
            amp = 0.5 + float(torch.rand(1, generator=generator))
            clean[b, 0, :, f] += amp
            clean[b, 0, :, 2 * f + 1] += amp / 2
    noisy = clean + torch.rand(batch, 1, T, F, generator=generator) * 1.5
    return noisy, clean


class Model(nn.Module):
    def __init__(self, channels: int, inner_kwargs: dict):
        super().__init__()
        self.lift = nn.Conv2d(1, channels, 1)
        self.block = TimeFrequencyBlock(channels, n_heads=4, inner_kwargs=inner_kwargs)
        self.out = nn.Conv2d(channels, 1, 1)

    def forward(self, x):
        return self.out(self.block(self.lift(x)))


def main(argv=None) -> dict:
    args = example_args(__doc__, argv, default_steps=120, small_steps=2)
    T, F, batch = (8, 8, 2) if args.small else (16, 16, 8)
    g = torch.Generator().manual_seed(args.seed)
    model = Model(16, {"d_state": 8, "expand": 2, "d_conv": 4, "chunk_size": 8})
    xv, yv = make_batch(64, T, F, torch.Generator().manual_seed(1234))
    noisy_mse = (xv - yv).square().mean().item()
    t0 = time.time()
    fit(model, lambda: make_batch(batch, T, F, g), lambda x, y: (model(x) - y).square().mean(),
        steps=args.steps, lr=3e-3, optimizer="adamw")
    mse = validation_mse(model, xv, yv)
    learned = mse < 0.1 * noisy_mse
    report("time_freq_denoise", steps=args.steps, t0=t0,
           result=f"validation MSE {mse:.4f} vs noisy input {noisy_mse:.4f}", learned=learned)
    return {"mse": mse, "noisy_mse": noisy_mse, "learned": learned}

if __name__ == "__main__":
    main()
