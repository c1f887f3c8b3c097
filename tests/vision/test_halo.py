import pytest
import torch

from attnzoo.vision.halo import HaloAttention, halo_attention, halo_attention_reference

F64 = torch.float64


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=F64)


def full_2d_attention(q, k, v, rel_h, rel_w, win):
    """Global attention over all pixels with logits q·k/sqrt(d) + q·r_h[i'-i] + q·r_w[j'-j]."""
    B, H, W, nh, d = q.shape
    ii, jj = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    dh = ii[None, :] - ii[:, None] + win - 1  # [N query, N key]
    dw = jj[None, :] - jj[:, None] + win - 1
    qf, kf, vf = q.reshape(B, H * W, nh, d), k.reshape(B, H * W, nh, d), v.reshape(B, H * W, nh, -1)
    logits = torch.einsum("bihd,bjhd->bhij", qf, kf) * d**-0.5
    logits = logits + torch.einsum("bihd,ijd->bhij", qf, rel_h[dh]) + torch.einsum("bihd,ijd->bhij", qf, rel_w[dw])
    o = torch.einsum("bhij,bjhe->bihe", logits.softmax(-1), vf)
    return o.reshape(B, H, W, nh, -1)


@pytest.mark.parametrize("block,halo,mode", [(8, 0, "zeros"), (4, 8, "mask"), (2, 7, "mask")])
def test_halo_covering_the_image_is_full_2d_attention(block, halo, mode):
    B, H, W, nh, d = 2, 8, 8, 2, 4
    q, k, v = rand(B, H, W, nh, d, seed=1), rand(B, H, W, nh, d, seed=2), rand(B, H, W, nh, 3, seed=3)
    win = block + 2 * halo
    rh, rw = rand(2 * win - 1, d, seed=4), rand(2 * win - 1, d, seed=5)
    want = full_2d_attention(q, k, v, rh, rw, win)
    got = halo_attention(q, k, v, rh, rw, block=block, halo=halo, pad_mode=mode)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(halo_attention_reference(q, k, v, rh, rw, block=block, halo=halo, pad_mode=mode), want)


@pytest.mark.parametrize("block,halo,mode", [(4, 1, "zeros"), (4, 3, "zeros"), (4, 2, "mask"), (2, 0, "zeros")])
def test_fast_path_matches_reference(block, halo, mode):
    B, H, W, nh, d = 1, 8, 12, 2, 4
    q, k, v = rand(B, H, W, nh, d, seed=1), rand(B, H, W, nh, d, seed=2), rand(B, H, W, nh, 5, seed=3)
    win = block + 2 * halo
    rh, rw = rand(2 * win - 1, d, seed=4), rand(2 * win - 1, d, seed=5)
    got = halo_attention(q, k, v, rh, rw, block=block, halo=halo, pad_mode=mode)
    want = halo_attention_reference(q, k, v, rh, rw, block=block, halo=halo, pad_mode=mode)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_zero_padding_differs_from_masking_only_in_blocks_whose_window_leaves_the_image():
    B, H, W, nh, d = 1, 12, 12, 1, 4
    q, k, v = rand(B, H, W, nh, d, seed=1), rand(B, H, W, nh, d, seed=2), rand(B, H, W, nh, d, seed=3)
    rh, rw = rand(11, d, seed=4), rand(11, d, seed=5)
    z = halo_attention(q, k, v, rh, rw, block=4, halo=1, pad_mode="zeros")
    m = halo_attention(q, k, v, rh, rw, block=4, halo=1, pad_mode="mask")
    diff = (z - m).abs().amax((0, 3, 4)) > 1e-12  # [H, W]
    want = torch.ones(H, W, dtype=torch.bool)
    want[4:8, 4:8] = False  # the centre block's window lies inside the image
    assert torch.equal(diff, want)


def test_locality_query_block_sees_only_its_halo():
    torch.manual_seed(0)
    m = HaloAttention(8, n_heads=2, block_size=4, halo_size=1).double()
    x = rand(1, 12, 12, 8, seed=6)
    y = m(x)
    x2 = x.clone()
    x2[0, 0, 0] += 1.0  # block (0, 0), not within 1 pixel of another block
    changed = (m(x2) - y).abs().sum(-1)[0] > 0
    want = torch.zeros(12, 12, dtype=torch.bool)
    want[:4, :4] = True
    assert torch.equal(changed, want)
    x3 = x.clone()
    x3[0, 4, 4] += 1.0  # first pixel of block (1,1): in the halo of blocks (0,0),(0,1),(1,0) too
    changed = (m(x3) - y).abs().sum(-1)[0] > 0
    want = torch.zeros(12, 12, dtype=torch.bool)
    want[:8, :8] = True
    assert torch.equal(changed, want)


def test_module_matches_reference_and_has_gradients():
    torch.manual_seed(0)
    m = HaloAttention(16, n_heads=4, block_size=4, halo_size=2).double()
    x = rand(2, 8, 8, 16, seed=7).requires_grad_(True)
    y = m(x)
    torch.testing.assert_close(y, m(x, reference=True))
    y.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())


def test_defaults_and_bad_input():
    m = HaloAttention(16, n_heads=4)
    assert (m.block_size, m.halo_size) == (8, 3) and m.rel_h.shape == (27, 4)
    with pytest.raises(ValueError, match="divisible by the block size"):
        m(torch.randn(1, 12, 16, 16))
    with pytest.raises(ValueError, match=r"\[B, H, W, 16\]"):
        m(torch.randn(1, 16, 16, 8))
    with pytest.raises(ValueError, match="rank 4"):
        m(torch.randn(16, 16, 16))
    with pytest.raises(ValueError, match="floating"):
        m(torch.ones(1, 16, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="n_heads"):
        HaloAttention(10, n_heads=4)
    with pytest.raises(ValueError, match="pad_mode"):
        HaloAttention(16, n_heads=4, pad_mode="reflect")
