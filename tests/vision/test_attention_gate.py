import pytest
import torch
import torch.nn.functional as F

from attnzoo.vision.attention_gate import AttentionGate, ResidualAttentionUNet


def test_gate_output_is_alpha_times_x_with_alpha_in_unit_interval():
    torch.manual_seed(0)
    gate = AttentionGate(8, 16)
    x, g = torch.randn(2, 12, 10, 8) * 3, torch.randn(2, 6, 5, 16) * 3
    out, alpha = gate(x, g)
    assert out.shape == x.shape and alpha.shape == (2, 12, 10, 1)
    assert torch.equal(out, alpha * x)
    assert bool(((alpha >= 0) & (alpha <= 1)).all()) and alpha.std() > 0


def test_gate_formula_at_the_coarse_scale_then_bilinear_upsampling():
    torch.manual_seed(0)
    gate = AttentionGate(4, 6, inter_channels=3, batch_norm=False).double()
    x, g = torch.randn(1, 8, 8, 4, dtype=torch.float64), torch.randn(1, 4, 4, 6, dtype=torch.float64)
    _, alpha = gate(x, g)
    xc, gc = x.permute(0, 3, 1, 2), g.permute(0, 3, 1, 2)
    # W_x: 2x2 stride-2 conv written as a sum over the four pixels of each 2x2 cell
    wx = gate.w_x.weight  # [3, 4, 2, 2]
    theta = sum(torch.einsum("oc,bchw->bohw", wx[:, :, a, b], xc[:, :, a::2, b::2]) for a in (0, 1) for b in (0, 1))
    phi = torch.einsum("oc,bchw->bohw", gate.w_g.weight[:, :, 0, 0], gc) + gate.w_g.bias[None, :, None, None]
    q = torch.einsum("oc,bchw->bohw", gate.psi.weight[:, :, 0, 0], F.relu(theta + phi)) + gate.psi.bias.view(1, 1, 1, 1)
    want = F.interpolate(torch.sigmoid(q), size=(8, 8), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(alpha, want)


def test_gate_rejects_g_at_the_wrong_scale():
    gate = AttentionGate(8, 16)
    with pytest.raises(ValueError, match="H/2, W/2"):
        gate(torch.randn(1, 8, 8, 8), torch.randn(1, 8, 8, 16))
    with pytest.raises(ValueError, match=r"\[B, H, W, 16\]"):
        gate(torch.randn(1, 8, 8, 8), torch.randn(1, 4, 4, 15))
    with pytest.raises(ValueError, match="batch"):
        gate(torch.randn(2, 8, 8, 8), torch.randn(1, 4, 4, 16))
    full = AttentionGate(8, 16, grid=False)  # non-grid: any g size, upsampled to x
    _, alpha = full(torch.randn(1, 8, 8, 8), torch.randn(1, 4, 4, 16))
    assert alpha.shape == (1, 8, 8, 1)


def test_residual_attention_unet_shapes_gates_and_gradients():
    torch.manual_seed(0)
    net = ResidualAttentionUNet(3, 2, base=4, depth=2)
    x = torch.randn(2, 16, 16, 3, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 16, 16, 2)
    assert [a.shape[1:3] for a in net.alphas] == [(8, 8), (16, 16)]
    y.square().mean().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 10, 16, 3))
