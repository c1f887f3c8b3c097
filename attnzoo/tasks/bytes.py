"""Real-text byte-level language modelling on the Python standard library's own source files.

No download: the corpus is every `*.py` under `sysconfig.get_paths()["stdlib"]` (site-packages
and test folders excluded), read as bytes. Files go to train or validation by a hash of their
relative path (blake2b, deterministic across machines and runs), so no file is in both.
Vocabulary 256; the metric is bits per byte, bpb = (mean cross-entropy in nats) / ln 2.

    corpus = StdlibBytes(max_bytes=4_000_000)
    x, y = corpus.windows("train", seq_len=256, num=1024, seed=0)   # [N, T] int64 each
"""

from __future__ import annotations

import hashlib
import math
import os
import sysconfig

import numpy as np
import torch

EXCLUDED_DIRS = ("site-packages", "dist-packages", "test", "tests", "idlelib", "__pycache__")


def is_validation(relpath: str, val_percent: int) -> bool:
    h = int.from_bytes(hashlib.blake2b(relpath.encode(), digest_size=8).digest(), "little")
    return h % 100 < val_percent


def bits_per_byte(loss_nats: float) -> float:
    return loss_nats / math.log(2)


class StdlibBytes:
    def __init__(self, *, root: str | None = None, val_percent: int = 10, max_bytes: int | None = 8_000_000):
        if not 0 < val_percent < 100:
            raise ValueError(f"val_percent must be in (0, 100), got {val_percent}")
        self.root = root or sysconfig.get_paths()["stdlib"]
        if not os.path.isdir(self.root):
            raise ValueError(f"no standard library folder at {self.root!r}")
        files = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED_DIRS)
            files += [os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
        train, val = [], []
        budget = {"train": 0, "validation": 0}
        cap = {"train": None if max_bytes is None else max_bytes * (100 - val_percent) // 100,
               "validation": None if max_bytes is None else max_bytes * val_percent // 100}
        for path in files:
            rel = os.path.relpath(path, self.root).replace(os.sep, "/")
            split = "validation" if is_validation(rel, val_percent) else "train"
            if cap[split] is not None and budget[split] >= cap[split]:
                continue
            with open(path, "rb") as f:
                data = f.read()
            (val if split == "validation" else train).append((rel, data))
            budget[split] += len(data)
        if not train or not val:
            raise ValueError(f"too few source files under {self.root!r} for a train/validation split")
        self.files = {"train": [r for r, _ in train], "validation": [r for r, _ in val]}
        self.data = {"train": np.frombuffer(b"".join(d for _, d in train), dtype=np.uint8),
                     "validation": np.frombuffer(b"".join(d for _, d in val), dtype=np.uint8)}

    def windows(self, split: str, *, seq_len: int, num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """num random windows of seq_len+1 bytes -> (inputs [num, T], labels [num, T]) int64."""
        if split not in self.data:
            raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
        data = self.data[split]
        if seq_len < 1 or len(data) <= seq_len + 1:
            raise ValueError(f"seq_len must be in [1, {len(data) - 2}] for the {split} split, got {seq_len}")
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, len(data) - seq_len - 1, size=num)
        seq = data[starts[:, None] + np.arange(seq_len + 1)[None, :]].astype(np.int64)
        return torch.from_numpy(seq[:, :-1].copy()), torch.from_numpy(seq[:, 1:].copy())
