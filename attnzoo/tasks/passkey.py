"""Passkey retrieval: a number hidden at a chosen depth in filler text, asked for at the end.

Mohtashami & Jaggi (2023), "Landmark Attention: Random-Access Infinite Context Length for
Transformers", arXiv:2305.16300 (the passkey test and its filler sentences).

Byte-level tokens (vocab 256). A prompt of exactly seq_len bytes is

    filler[:a] + "The pass key is 71432. Remember it. 71432 is the pass key. " + filler[:b]
    + "What is the pass key? The pass key is 71432"

with a/(a+b) = depth. Labels (next-token, like MQAR) are -100 everywhere except at the positions
whose next byte is a digit of the answer, so accuracy is the fraction of key digits recalled.
Shapes: inputs, labels [N, seq_len] int64.
"""

from __future__ import annotations

import numpy as np
import torch

IGNORE_INDEX = -100
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
QUESTION = "What is the pass key? The pass key is "


def _needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


def passkey_overhead(num_digits: int) -> int:
    """Bytes used by the needle, the question and the answer (the rest is filler)."""
    return len(_needle("0" * num_digits)) + len(QUESTION) + num_digits


def generate_passkey(num_examples: int, *, seq_len: int = 256, num_digits: int = 5,
                     depth: float | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """depth in [0, 1] places the needle (0 = start, 1 = just before the question); None draws
    a depth uniformly per example. -> (inputs [N, seq_len], labels [N, seq_len]) int64."""
    if num_digits < 1:
        raise ValueError(f"num_digits must be >= 1, got {num_digits}")
    need = passkey_overhead(num_digits) + 1
    if seq_len < need:
        raise ValueError(f"seq_len must be >= {need} for a {num_digits}-digit passkey, got {seq_len}")
    if depth is not None and not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1] or None, got {depth}")
    if num_examples < 1:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    rng = np.random.default_rng(seed)
    n_fill = seq_len + 1 - passkey_overhead(num_digits)
    filler = (FILLER * (n_fill // len(FILLER) + 2)).encode()
    inputs = np.empty((num_examples, seq_len), dtype=np.int64)
    labels = np.full((num_examples, seq_len), IGNORE_INDEX, dtype=np.int64)
    for i in range(num_examples):
        key = "".join(str(d) for d in rng.integers(0, 10, size=num_digits))
        d = rng.random() if depth is None else depth
        a = round(d * n_fill)
        text = filler[:a] + _needle(key).encode() + filler[: n_fill - a] + QUESTION.encode() + key.encode()
        seq = np.frombuffer(text, dtype=np.uint8).astype(np.int64)
        assert seq.shape[0] == seq_len + 1
        inputs[i] = seq[:-1]
        labels[i, -num_digits:] = seq[-num_digits:]
    return torch.from_numpy(inputs), torch.from_numpy(labels)
