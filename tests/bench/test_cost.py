"""The Kinetics cost model on hand-computed values."""

from __future__ import annotations

import pytest

from attnzoo.bench.cost import (
    block_topk_cost,
    block_topk_generation_cost,
    cost_table,
    dense_generation_cost,
    dense_kv_cost,
    fixed_state_cost,
    mixer_token_cost,
    sparse_kv_term,
)


def test_softmax_per_token_cost_by_hand():
    # card: per token fp32 K and V (2 * 512 * 4 B) plus valid (1 B) and kpos (8 B), plus `seen` (8 B):
    # 4096 * 4105 + 8 B; 2 FLOPs per 4-byte element read
    c = mixer_token_cost("softmax", 4096, d_model=512, n_heads=8)
    assert c.kind == "dense KV"
    assert c.bytes == 4096 * 4105 + 8 == 16_814_088
    assert c.flops == 8_407_044
    assert c.eflops() == 8_407_044 + 562.5 * 16_814_088 == 9_466_331_544
    assert c.eflops(E=1.0) == 25_221_132
    # the same layer with a bf16 cache through the explicit formula: 4·L·H·d FLOPs, 2·L·H·d·2 bytes
    d = dense_kv_cost(4096, n_heads=8, head_dim=64)
    assert (d.flops, d.bytes) == (8_388_608, 8_388_608)
    assert dense_kv_cost(4096, n_heads=8, n_kv_heads=2, head_dim=64, n_params=10).bytes == 2_097_152
    assert dense_kv_cost(4096, n_heads=8, head_dim=64, n_params=10).flops == 8_388_628


def test_linear_attention_per_token_cost_by_hand():
    # linear (elu+1, normalized): state [H, K, V+1] fp32 = 8 * 64 * 65 * 4 = 133,120 bytes at any L
    for L in (4096, 131072):
        c = mixer_token_cost("linear", L, d_model=512, n_heads=8)
        assert c.kind == "fixed state"
        assert c.bytes == 133_120
        assert c.flops == 4 * 33_280  # update + read-out, 4 FLOPs per state element
        assert c.eflops() == 133_120 * 563.5 == 75_013_120
    f = fixed_state_cost(1000, n_params=3)
    assert (f.flops, f.bytes) == (6 + 1000, 1000)


def test_block_topk_budget_and_search_by_hand():
    # Bud = 64 + 16*8 = 192 keys; search reads L/16 pooled keys
    c = block_topk_cost(4096, n_heads=2, head_dim=4, block_size=16, top_k=8, local=64)
    assert c.flops == 4 * 192 * 2 * 4 + 2 * 256 * 2 * 4
    assert c.bytes == (2 * 192 + 256) * 2 * 4 * 2
    short = block_topk_cost(100, n_heads=2, head_dim=4, block_size=16, top_k=8, local=64)
    assert short.flops == 4 * 100 * 2 * 4 + 2 * 100 / 16 * 2 * 4  # context shorter than the budget
    # the −½·max(0, Bud − L_in)² correction equals the sum of min(Bud, L_in + t) over the steps
    for L_in, L_out, bud in ((100, 500, 256), (1000, 300, 256), (0, 50, 10)):
        exact = sum(min(bud, L_in + t) for t in range(L_out))
        assert abs(sparse_kv_term(L_in, L_out, bud) - exact) <= 0.5 * max(0, bud - L_in)  # continuous vs discrete
    assert sparse_kv_term(1000, 300, 256) == 256 * 300


def test_generation_costs_by_hand():
    comp, mem = dense_generation_cost(1000, 10, N=2, n_params=5, n_heads=4, n_kv_heads=2, head_dim=8)
    assert comp == 2 * (2 * 5 * 10 + 2 * (2000 + 10) * 10 * 4 * 8)
    assert mem == 2 * (2000 + 20) * 10 * 2 * 8
    # a budget larger than the whole context costs the same KV term as dense
    comp_s, _ = block_topk_generation_cost(1000, 10, N=2, n_params=5, n_heads=4, n_kv_heads=2, head_dim=8,
                                           block_size=16, top_k=1000)
    kv = 16000 * 10 - 0.5 * 15000**2
    assert comp_s == 2 * (2 * 5 * 10 + 4 * kv * 4 * 8 + (2000 + 10) / 16 * 10 * 4 * 8)


def test_table_covers_decoding_mixers_and_orders_them():
    rows = {name: (kind, costs) for name, kind, costs in cost_table(d_model=512, n_heads=8)}
    assert "softmax" in rows and "block_sparse" in rows and "routing_balanced" not in rows
    sm = [c.eflops() for c in rows["softmax"][1]]
    assert sm[1] == pytest.approx(8 * sm[0]) and sm[2] == pytest.approx(32 * sm[0])
    bs = [c.eflops() for c in rows["block_sparse"][1]]
    assert all(b < s for b, s in zip(bs, sm))
    assert rows["moh"][1][0].bytes == pytest.approx(0.5 * rows["softmax"][1][0].bytes)
    with pytest.raises(ValueError, match="decode"):
        mixer_token_cost("routing_balanced", 4096)
    with pytest.raises(ValueError, match="L"):
        dense_kv_cost(0, n_heads=1, head_dim=1)


def test_cost_cli_prints_table_and_writes_plot(tmp_path, capsys):
    from attnzoo.cli import main

    png = tmp_path / "cost.png"
    assert main(["cost", "--d-model", "256", "--n-heads", "4", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "softmax" in out and "L=128k" in out
    assert png.stat().st_size > 1000
