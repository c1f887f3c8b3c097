import time

import numpy as np
import pytest
import torch

from attnzoo.tasks.mqar import _choose_weighted, gap_log_probs, generate_mqar, mqar_splits, sequence_hashes


def _check_structure(x, y, T, D, V, random_filler):
    ctx = 2 * D
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        keys, values = row_x[0:ctx:2], row_x[1:ctx:2]
        assert len(set(keys)) == D and all(1 <= k < V // 2 for k in keys)
        assert len(set(values)) == D and all(V // 2 <= v < V for v in values)
        kv = dict(zip(keys, values))
        scored = [t for t in range(T) if row_y[t] != -100]
        assert len(scored) == D
        # every key is asked once, at an even offset of the query region; its label is its value
        asked = [row_x[t] for t in scored]
        assert sorted(asked) == sorted(keys)
        assert all((t - ctx) % 2 == 0 and t >= ctx for t in scored)
        assert all(row_y[t] == kv[row_x[t]] for t in scored)
        if not random_filler:
            assert sum(1 for t in range(ctx, T) if row_x[t] != 0) == D


@pytest.mark.parametrize("random_filler", [False, True])
def test_mqar_structure(random_filler):
    x, y = generate_mqar(64, seq_len=32, num_pairs=4, vocab_size=64, seed=3, random_non_queries=random_filler)
    assert x.shape == y.shape == (64, 32) and x.dtype == y.dtype == torch.int64
    _check_structure(x, y, 32, 4, 64, random_filler)
    if random_filler:
        assert int((x[:, 8:] == 0).sum()) < 0.05 * x[:, 8:].numel()


def test_mqar_tight_config_4d_equals_t():
    x, y = generate_mqar(16, seq_len=16, num_pairs=4, vocab_size=17, seed=0)
    _check_structure(x, y, 16, 4, 17, True)


def test_mqar_is_deterministic_and_seeds_differ():
    a = generate_mqar(50, seq_len=64, num_pairs=4, vocab_size=128, seed=7)
    b = generate_mqar(50, seq_len=64, num_pairs=4, vocab_size=128, seed=7)
    c = generate_mqar(50, seq_len=64, num_pairs=4, vocab_size=128, seed=8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_train_and_test_never_share_a_sequence():
    (xtr, _), (xte, yte) = mqar_splits(seq_len=16, num_pairs=2, vocab_size=17, num_train=3000, num_test=3000)
    assert sequence_hashes(xtr).isdisjoint(sequence_hashes(xte))
    assert xte.shape[0] > 2500 and xte.shape == yte.shape


def test_gap_distribution_follows_power_law():
    # one gap per row: the first Gumbel-top-k draw has exactly the probabilities p
    space, n = 6, 200_000
    logp = gap_log_probs(space, 0.01)
    draws = _choose_weighted(np.random.default_rng(0), n, logp, 1)[:, 0]
    freq = np.bincount(draws, minlength=space) / n
    np.testing.assert_allclose(freq, np.exp(logp), atol=4 * np.sqrt(0.25 / n))
    assert np.all(np.diff(np.exp(logp)) < 0)   # p(g) ∝ g^(a-1) decreases: short gaps are favoured


def test_mqar_gaps_without_replacement_prefer_short_gaps():
    _x, y = generate_mqar(2000, seq_len=64, num_pairs=4, vocab_size=128, seed=1)
    pos = (y != -100).nonzero()[:, 1]
    gaps = (pos - 8) // 2
    counts = torch.bincount(gaps, minlength=28).double()
    assert gaps.max() < 28 and counts.sum() == 8000
    # without replacement the 4 gaps of a row are distinct, yet short gaps still dominate
    assert counts[0] > 1.5 * counts[3] > 2 * counts[20]
    assert all(len(set(((y[i] != -100).nonzero()[:, 0]).tolist())) == 4 for i in range(100))


@pytest.mark.parametrize(("T", "D", "V", "match"), [(15, 4, 64, "4 \\* num_pairs <= seq_len"),
                                                    (64, 4, 64, "vocab_size > seq_len"),
                                                    (64, 4, 8, "vocab_size > seq_len")])
def test_impossible_configurations_raise(T, D, V, match):
    with pytest.raises(ValueError, match=match):
        generate_mqar(4, seq_len=T, num_pairs=D, vocab_size=V)


def test_100k_examples_are_fast():
    t = time.perf_counter()
    x, _ = generate_mqar(100_000, seq_len=64, num_pairs=4, vocab_size=8192, seed=0)
    assert x.shape == (100_000, 64)
    assert time.perf_counter() - t < 15.0
