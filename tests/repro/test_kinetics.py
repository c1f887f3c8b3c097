"""kinetics: the decode-step ops against dense attention, the verdict helpers, and the quick smoke run."""

import math

import pytest
import torch

from attnzoo.bench.decode_step import DecoderLayerParams, block_topk_decode, cache_pooled_keys, device_rates
from attnzoo.ops.softmax import softmax_attention
from attnzoo.ops.sparse import pooled_block_keys
from attnzoo.repro import kinetics as kin
from _smoke import run_quick


def test_block_topk_decode_with_every_block_is_dense():
    torch.manual_seed(0)
    B, L, H, D, bs = 2, 64, 2, 8, 8
    q, k, v = torch.randn(B, H, D), torch.randn(B, L, H, D), torch.randn(B, L, H, D)
    o = block_topk_decode(q, k, v, pooled_block_keys(k, None, bs), block_size=bs, top_k=L // bs)
    ref = softmax_attention(q[:, None], k, v)[:, 0]
    torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-5)


def test_block_topk_decode_reads_only_the_best_blocks():
    torch.manual_seed(1)
    B, L, H, D, bs = 1, 32, 1, 4, 8
    q, k, v = torch.randn(B, H, D), torch.randn(B, L, H, D), torch.randn(B, L, H, D)
    k[:, 8:16] += 3 * q[:, None]              # block 1 aligned with q: the one top_k=1 picks besides the newest
    o = block_topk_decode(q, k, v, pooled_block_keys(k, None, bs), block_size=bs, top_k=1)
    keep = list(range(8, 16)) + list(range(24, 32))
    ref = softmax_attention(q[:, None], k[:, keep], v[:, keep])[:, 0]
    torch.testing.assert_close(o, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of block_size"):
        block_topk_decode(q, k[:, :30], v[:, :30], pooled_block_keys(k, None, bs), block_size=bs, top_k=1)


def test_cache_pooled_keys_equal_the_library_pooling_on_a_slice():
    k = torch.randn(2, 48, 3, 4)[:, :32]                       # a slice of a longer cache, as the study reads
    torch.testing.assert_close(cache_pooled_keys(k, 8), pooled_block_keys(k, None, 8))
    with pytest.raises(ValueError, match="multiple of block_size"):
        cache_pooled_keys(k[:, :30], 8)


def test_layer_params_and_rates():
    layer = DecoderLayerParams(16, n_heads=2, n_kv_heads=2, head_dim=8, mlp_hidden=24)
    assert layer.n_params == 16 * 48 + 16 * 16 + 3 * 16 * 24
    assert layer(torch.randn(3, 1, 16)).shape == (3, 1, 16)
    flops, bw = device_rates("cpu", torch.float32, n=64, copy_bytes=1 << 16)
    assert flops > 0 and bw > 0


def test_band_worst_and_crossover():
    assert kin.band(1.9) == "reproduced" and kin.band(1 / 3) == "partly" and kin.band(5) == "not reproduced"
    assert kin.worst(["reproduced", "partly"]) == "partly"
    Ls = [100, 1000, 10000]
    assert math.isclose(kin.crossover(Ls, [1, 10, 100], [10, 10, 10]), 1000, rel_tol=1e-9)
    assert math.isclose(kin.crossover(Ls, [1, 4, 40], [10, 10, 10]), 10 ** (3 + math.log(2.5) / math.log(10)),
                        rel_tol=1e-9)
    assert kin.crossover(Ls, [1, 1, 1], [2, 2, 2]) == math.inf
    assert kin.crossover(Ls, [3, 3, 3], [2, 2, 2]) == 100


def test_quick_smoke(tmp_path):
    claims, rows = run_quick("kinetics", tmp_path)
    assert [c.claim for c in claims] == list(kin.CLAIMS)
    assert sum(r.get("kind") == "decode" for r in rows) == len(kin.SIZES["quick"]["contexts"])
