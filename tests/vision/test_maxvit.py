import pytest
import torch

from attnzoo.vision.maxvit import (
    BlockAttention,
    GridAttention,
    MaxViTBlock,
    RelativeGroupAttention,
    block_partition,
    block_unpartition,
    grid_partition,
    grid_unpartition,
)

F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def influence(module, x, i, j):
    """Bool [H, W]: which output tokens change when input token (i, j) changes."""
    with torch.no_grad():
        y = module(x)
        x2 = x.clone()
        x2[0, i, j] += 1.0
        return (module(x2) - y).abs().sum(-1)[0] > 1e-12


@pytest.mark.parametrize("i,j", [(0, 0), (5, 2), (7, 11)])
def test_block_attention_groups_are_the_windows(i, j):
    torch.manual_seed(0)
    m = BlockAttention(8, n_heads=2, size=4).double()
    H, W = 8, 12
    got = influence(m, rand(1, H, W, 8, seed=1), i, j)
    r, c = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    want = (r // 4 == i // 4) & (c // 4 == j // 4)
    assert torch.equal(got, want)


@pytest.mark.parametrize("i,j", [(0, 0), (5, 2), (7, 11)])
def test_grid_attention_groups_are_the_strided_token_sets(i, j):
    torch.manual_seed(0)
    m = GridAttention(8, n_heads=2, size=4).double()
    H, W = 8, 12  # strides H/G = 2, W/G = 3
    got = influence(m, rand(1, H, W, 8, seed=1), i, j)
    r, c = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    want = (r % 2 == i % 2) & (c % 3 == j % 3)
    assert torch.equal(got, want) and int(want.sum()) == 16


def test_partitions_round_trip_and_grid_group_content():
    x = rand(2, 8, 12, 3, seed=2)
    assert torch.equal(block_unpartition(block_partition(x, 4), 4, 2, 8, 12), x)
    assert torch.equal(grid_unpartition(grid_partition(x, 4), 4, 2, 8, 12), x)
    g = grid_partition(x, 4)  # first group: tokens at rows 0,2,4,6 and cols 0,3,6,9
    assert torch.equal(g[0].reshape(4, 4, 3), x[0, 0::2, 0::3])


def test_relative_bias_attention_matches_a_loop():
    torch.manual_seed(0)
    S, C, nh = 3, 8, 2
    m = RelativeGroupAttention(C, n_heads=nh, size=S).double()
    with torch.no_grad():
        m.bias_table.normal_()
    x = rand(2, S * S, C, seed=3)
    q, k, v = m.qkv(x).view(2, S * S, 3, nh, C // nh).unbind(2)
    out = torch.zeros(2, S * S, nh, C // nh, dtype=F64)
    for a in range(S * S):
        ra, ca = divmod(a, S)
        logits = []
        for b in range(S * S):
            rb, cb = divmod(b, S)
            bias = m.bias_table[:, rb - ra + S - 1, cb - ca + S - 1]  # [heads]
            logits.append((q[:, a] * k[:, b]).sum(-1) / (C // nh) ** 0.5 + bias)
        p = torch.softmax(torch.stack(logits, -1), -1)  # [2, nh, S*S]
        out[:, a] = torch.einsum("nhb,nbhd->nhd", p, v)
    want = m.proj(out.reshape(2, S * S, C))
    torch.testing.assert_close(m(x), want)


def test_maxvit_block_shapes_gradients_and_errors():
    torch.manual_seed(0)
    m = MaxViTBlock(16, n_heads=2, window_size=4, grid_size=4, drop_path=0.1)
    x = torch.randn(2, 8, 8, 16, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.eval()
    x1 = torch.randn(1, 8, 8, 16)
    torch.testing.assert_close(m(x1), m(x1))  # eval: deterministic (no drop-path)
    with pytest.raises(ValueError, match="divisible by the window size"):
        m(torch.randn(1, 6, 8, 16))
    with pytest.raises(ValueError, match=r"\[B, H, W, 16\]"):
        m(torch.randn(1, 8, 8, 15))
    with pytest.raises(ValueError, match="grid size"):
        GridAttention(16, n_heads=2, size=3)(torch.randn(1, 8, 8, 16))
    assert RelativeGroupAttention(16, n_heads=2, size=7).bias_table.shape == (2, 13, 13)
