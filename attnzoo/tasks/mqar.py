"""Multi-query associative recall (MQAR), as defined by Zoology.

Arora, Eyuboglu, Timalsina, Johnson, Poli, Zou, Rudra, Ré (2023), "Zoology: Measuring and
Improving Recall in Efficient Language Models", arXiv:2312.04927.

A sequence of length T+1 (before the shift) is

    k_1 v_1 k_2 v_2 ... k_D v_D | q-region of T+1-2D tokens

- keys are drawn without replacement from [1, V/2), values from [V/2, V) (V = vocab_size);
- every key is queried exactly once in the q-region, at offset 2·g, where the gaps g are drawn
  without replacement from {0, .., S-1}, S = (T - 2D) // 2, with p(g) ∝ a·(g+1)^(a-1), a = 0.01
  (a power law that favours short gaps);
- the label of the token right after a query is that key's value; every other label is -100;
- filler tokens (zeros) are replaced by random tokens from [0, V) (Zoology's random_non_queries);
- inputs = seq[:-1], labels = seq[1:], so both are [N, T] int64.

Constraints (ValueError otherwise): 4·D <= T (so that S >= D gaps exist) and V > T (which then
leaves V/2 - 1 >= 2D - 1 >= D distinct keys and values). Generation is vectorised with numpy: uniform sampling without
replacement is Floyd's algorithm run on all rows at once, weighted sampling without replacement is the
Gumbel top-k trick (Efraimidis & Spirakis 2006), which draws exactly the same distribution as
drawing one item at a time with probability proportional to p among those left.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MQARConfig:
    seq_len: int = 64          # T (model input length)
    num_pairs: int = 4         # D
    vocab_size: int = 8192     # V
    power_a: float = 0.01
    random_non_queries: bool = True

    def check(self):
        T, D, V = self.seq_len, self.num_pairs, self.vocab_size
        if T < 1 or D < 1:
            raise ValueError(f"seq_len and num_pairs must be positive, got seq_len={T}, num_pairs={D}")
        if 4 * D > T:
            raise ValueError(f"MQAR needs 4 * num_pairs <= seq_len (room to query every key), got 4*{D} > {T}")
        if V <= T:
            raise ValueError(f"MQAR needs vocab_size > seq_len, got vocab_size={V} <= seq_len={T}")
        if not 0 < self.power_a <= 1:
            raise ValueError(f"power_a must be in (0, 1], got {self.power_a}")


def _choose_uniform(rng: np.random.Generator, n_rows: int, population: int, k: int) -> np.ndarray:
    """k distinct indices in [0, population) per row, uniformly, in random order. -> [n_rows, k].

    Floyd's algorithm, vectorised over rows: for j = population-k .. population-1 draw t in [0, j];
    take t unless already taken, else take j. Each k-subset is equally likely; a random
    permutation of the k columns then makes the order uniform too. O(n_rows · k²)."""
    out = np.empty((n_rows, k), dtype=np.int64)
    for i, j in enumerate(range(population - k, population)):
        t = rng.integers(0, j + 1, size=n_rows)
        taken = (out[:, :i] == t[:, None]).any(axis=1) if i else np.zeros(n_rows, dtype=bool)
        out[:, i] = np.where(taken, j, t)
    order = np.argsort(rng.random((n_rows, k)), axis=1)
    return np.take_along_axis(out, order, axis=1)


def _choose_weighted(rng: np.random.Generator, n_rows: int, log_p: np.ndarray, k: int) -> np.ndarray:
    """k distinct indices per row drawn without replacement with weights exp(log_p) (Gumbel top-k)."""
    g = log_p[None, :] - np.log(-np.log(rng.random((n_rows, log_p.shape[0])) + 1e-300) + 1e-300)
    idx = np.argpartition(-g, k - 1, axis=1)[:, :k] if k < log_p.shape[0] else np.argsort(-g, axis=1)
    order = np.argsort(-np.take_along_axis(g, idx, axis=1), axis=1)
    return np.take_along_axis(idx, order, axis=1)


def gap_log_probs(space: int, power_a: float) -> np.ndarray:
    """log p(g) for g = 0..space-1 with p ∝ a·(g+1)^(a-1), normalised."""
    g = np.arange(1, space + 1, dtype=np.float64)
    logp = np.log(power_a) + (power_a - 1.0) * np.log(g)
    return logp - np.logaddexp.reduce(logp)


def generate_mqar(num_examples: int, *, seq_len: int = 64, num_pairs: int = 4, vocab_size: int = 8192,
                  seed: int = 0, power_a: float = 0.01, random_non_queries: bool = True,
                  rows_per_block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (inputs [N, T] int64, labels [N, T] int64 with -100 where nothing is asked)."""
    cfg = MQARConfig(seq_len, num_pairs, vocab_size, power_a, random_non_queries)
    cfg.check()
    if num_examples < 1:
        raise ValueError(f"num_examples must be positive, got {num_examples}")
    rng = np.random.default_rng(seed)
    T, D, V = seq_len, num_pairs, vocab_size
    ctx = 2 * D
    half = V // 2
    space = (T - ctx) // 2
    log_p = gap_log_probs(space, power_a)
    inputs = np.empty((num_examples, T), dtype=np.int64)
    labels = np.empty((num_examples, T), dtype=np.int64)
    rows = np.arange(rows_per_block)[:, None]
    for start in range(0, num_examples, rows_per_block):
        n = min(rows_per_block, num_examples - start)
        keys = 1 + _choose_uniform(rng, n, half - 1, D)          # in [1, V/2)
        values = half + _choose_uniform(rng, n, V - half, D)     # in [V/2, V)
        gaps = _choose_weighted(rng, n, log_p, D)                # in [0, space)
        seq = np.zeros((n, T + 1), dtype=np.int64)
        seq[:, 0:ctx:2] = keys
        seq[:, 1:ctx:2] = values
        lab = np.full((n, T + 1), IGNORE_INDEX, dtype=np.int64)
        qpos = ctx + 2 * gaps
        seq[rows[:n], qpos] = keys
        lab[rows[:n], qpos + 1] = values
        x = seq[:, :-1]
        if random_non_queries:
            filler = x == 0
            x = np.where(filler, rng.integers(0, V, size=x.shape), x)
        inputs[start:start + n] = x
        labels[start:start + n] = lab[:, 1:]
    return torch.from_numpy(inputs), torch.from_numpy(labels)


def sequence_hashes(inputs: torch.Tensor) -> set[bytes]:
    """A hash per row, to check that two splits share no sequence."""
    arr = np.ascontiguousarray(inputs.cpu().numpy())
    return {hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in arr}


def mqar_splits(*, seq_len: int, num_pairs: int, vocab_size: int, num_train: int, num_test: int,
                seed: int = 0, power_a: float = 0.01, random_non_queries: bool = True):
    """Train and test sets from different seeds; test rows that also occur in train are dropped
    (with V >= 128 and T >= 16 this almost never happens)."""
    kw = {"seq_len": seq_len, "num_pairs": num_pairs, "vocab_size": vocab_size, "power_a": power_a,
          "random_non_queries": random_non_queries}
    train = generate_mqar(num_train, seed=2 * seed, **kw)
    test = generate_mqar(num_test, seed=2 * seed + 1, **kw)
    seen = sequence_hashes(train[0])
    keep = [hashlib.blake2b(np.ascontiguousarray(r).tobytes(), digest_size=16).digest() not in seen
            for r in test[0].numpy()]
    if not all(keep):
        k = torch.tensor(keep)
        test = (test[0][k], test[1][k])
    return train, test
