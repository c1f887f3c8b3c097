import pytest
import torch
from torch import nn

from attnzoo.models.time_freq_block import SharedAxisAttention, TimeFrequencyBlock

F64 = torch.float64
MAMBA = {"d_state": 4, "expand": 2, "d_conv": 4, "chunk_size": 8}


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def block(**kw):
    torch.manual_seed(0)
    kw.setdefault("inner_kwargs", MAMBA)
    return TimeFrequencyBlock(8, n_heads=2, **kw).double()


def test_attention_is_one_module_shared_by_both_axes():
    m = block()
    attn_params = [n for n, _ in m.named_parameters() if "attention" in n]
    assert sorted(attn_params) == sorted(f"attention.{n}" for n, _ in m.attention.named_parameters())
    x = rand(1, 8, 5, 6, seed=1)
    t0, f0 = m.time_stage(x), m.freq_stage(x)
    with torch.no_grad():
        m.attention.out_proj.bias.add_(1.0)
    assert not torch.allclose(m.time_stage(x), t0) and not torch.allclose(m.freq_stage(x), f0)
    m.zero_grad()
    m.time_stage(x).sum().backward()
    g_time = m.attention.in_proj.weight.grad.clone()
    m.zero_grad()
    m.freq_stage(x).sum().backward()
    assert g_time.abs().sum() > 0 and m.attention.in_proj.weight.grad.abs().sum() > 0


def test_shared_attention_is_multihead_attention():
    torch.manual_seed(0)
    a = SharedAxisAttention(8, n_heads=2).double()
    ref = nn.MultiheadAttention(8, 2, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(a.in_proj.weight)
        ref.in_proj_bias.copy_(a.in_proj.bias)
        ref.out_proj.weight.copy_(a.out_proj.weight)
        ref.out_proj.bias.copy_(a.out_proj.bias)
    x = rand(3, 7, 8, seed=2)
    torch.testing.assert_close(a(x), ref(x, x, x, need_weights=False)[0])


def test_time_stage_mixes_only_along_time_and_freq_stage_only_along_frequency():
    m = block()
    x = rand(2, 8, 6, 5, seed=3)
    x2 = x.clone()
    x2[0, :, 2, 3] += 1.0  # one time frame of one frequency bin
    dt = (m.time_stage(x2) - m.time_stage(x)).abs().sum(1) > 0  # [B, T, F]
    want = torch.zeros(2, 6, 5, dtype=torch.bool)
    want[0, :, 3] = True  # the whole bin 3 of row 0, nothing else
    assert torch.equal(dt, want)
    df = (m.freq_stage(x2) - m.freq_stage(x)).abs().sum(1) > 0
    want = torch.zeros(2, 6, 5, dtype=torch.bool)
    want[0, 2, :] = True  # the whole frame 2 of row 0
    assert torch.equal(df, want)


def test_full_block_shapes_gradients_inner_mixer_argument_and_errors():
    m = block()
    x = rand(2, 8, 6, 5, seed=4).requires_grad_(True)
    y = m(x)
    assert y.shape == x.shape
    y.square().sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    soft = block(inner_mixer="softmax", inner_kwargs={"n_heads": 2})
    assert type(soft.time_mixer.forward_mixer).__name__ == "Softmax"
    assert soft(x.detach()).shape == x.shape
    with pytest.raises(ValueError, match=r"\[B, C, T, F\] with C = 8"):
        m(rand(2, 7, 6, 5))
    with pytest.raises(ValueError):
        block(inner_mixer="partial_attention", inner_kwargs={"prefix_len": 2})  # not causal
