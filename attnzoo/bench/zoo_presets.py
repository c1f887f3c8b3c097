"""Presets of the zoo sweep: which (T, pairs), vocabulary, widths, learning rates and budgets.

quick     a 2-core CPU, all registered causal mixers in about 10 minutes: one small MQAR setting
          (T=64, 4 pairs, vocab 128), d_model 64, lr 3e-3, batch 64; one single-threaded run per
          core; mixers at Zoology-like sizes (QUICK_MIXER_KWARGS: one head for full attention)
          rather than their cards' conformance sizes. Equal steps for every mixer: 600, or as many
          as the probed step times fit in 570 s, but at least 300 (zoo_schedule.py); early stop at
          0.99. Measured: see benchmarks/results/zoo_quick_cpu/ and the commit that wrote it.
standard  one GPU in about 9 minutes: two settings, two widths, two learning rates, eight runs
          at once on the GPU (each tiny model leaves it mostly idle; the step count is planned with
          the step times measured for 8 runs sharing an H200, zoo_schedule.contention_for).
paper     Zoology Figure 2 (Arora et al. 2023, arXiv:2312.04927): (T, pairs) = (64,4), (128,8),
          (256,16), (512,64); vocab 8192; d_model 64..512; lr ∈ logspace(-3, -1.5, 4); hours on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class ZooPreset:
    name: str
    grid: tuple                     # ((seq_len, num_pairs), ...)
    vocab_size: int
    d_models: tuple
    lrs: tuple
    num_train: int
    num_test: int
    batch_size: int
    steps: int                      # most steps a run takes
    eval_every: int
    n_layers: int = 2
    target_accuracy: float = 0.99
    weight_decay: float = 0.1
    warmup_steps: int = 20
    total_seconds: float | None = None     # wall-clock budget of the whole sweep (None: none)
    run_seconds: float | None = None       # cap per run (None: none)
    min_steps: int = 1                      # steps every run gets even when total_seconds is too short
    workers: int = 8                        # runs at once on CUDA (processes); on a CPU one per core
    seed: int = 0
    mixer_kwargs: dict | None = None        # per mixer name: constructor kwargs over the card's example_kwargs


# The quick preset builds each mixer at a Zoology-like size instead of its conformance-sized card
# example (often 4 heads): one head for full attention (Zoology's MQAR sweep; measured on softmax
# at 600 steps: 1 head 0.90, 2 heads 0.51, 4 heads 0.27), two for the recurrent families, a long
# convolution as long as T for base_conv. Mamba keeps its chunks of 8 (chunks of 64 ran 4 s/step,
# d_state 16 1 s/step). Per-step costs: benchmarks/zoo_step_cost.py.
QUICK_MIXER_KWARGS = {
    "softmax": {"n_heads": 1, "n_kv_heads": 1},
    "gated_softmax": {"n_heads": 1, "n_kv_heads": 1},
    "prompt_tuning": {"n_heads": 1, "n_kv_heads": 1},
    "sliding_window": {"n_heads": 1},
    "block_sparse": {"n_heads": 2, "n_kv_heads": 1},
    "routing": {"n_heads": 2, "n_local_heads": 1, "n_clusters": 4, "window": 8},
    "base_conv": {"l_max": 64},
    "mamba2": {"head_dim": 32},
    "rwkv6": {"n_heads": 2},
    "h3": {"head_dim": 1},
    "gaam": {"n_heads": 2},
}

PRESETS = {
    "quick": ZooPreset(
        name="quick", grid=((64, 4),), vocab_size=128, d_models=(64,), lrs=(3e-3,), num_train=20_000,
        num_test=256, batch_size=64, steps=600, min_steps=300, eval_every=50, total_seconds=570.0,
        mixer_kwargs=QUICK_MIXER_KWARGS,
    ),
    "standard": ZooPreset(
        name="standard", grid=((64, 4), (128, 8)), vocab_size=2048, d_models=(64, 128), lrs=(1e-3, 3e-3),
        num_train=50_000, num_test=1000, batch_size=128, steps=4000, eval_every=100,
        total_seconds=480.0, run_seconds=60.0, workers=8,
    ),
    "paper": ZooPreset(
        name="paper", grid=((64, 4), (128, 8), (256, 16), (512, 64)), vocab_size=8192,
        d_models=(64, 128, 256, 512), lrs=tuple(float(x) for x in np.logspace(-3, -1.5, 4)),
        num_train=100_000, num_test=3000, batch_size=256, steps=12_500, eval_every=500, workers=4,
    ),
}


def get_preset(name: str, **overrides) -> ZooPreset:
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    return replace(PRESETS[name], **{k: v for k, v in overrides.items() if v is not None})
