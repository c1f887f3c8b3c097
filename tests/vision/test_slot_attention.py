import pytest
import torch

from attnzoo.vision.slot_attention import SlotAttention, SMTCSlotAttention

F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return SlotAttention(6, slot_dim=8, n_slots=4, mlp_hidden=16, **kw).double()


def test_attention_normalises_over_slots():
    m = make()
    slots, attn = m(rand(2, 10, 6, seed=1), generator=torch.Generator().manual_seed(0))
    assert slots.shape == (2, 4, 8) and attn.shape == (2, 4, 10)
    torch.testing.assert_close(attn.sum(1), torch.ones(2, 10, dtype=F64))


def test_one_iteration_matches_the_formula():
    m = make(iters=1)
    x, s = rand(2, 10, 6, seed=1), rand(2, 4, 8, seed=2)
    got, _ = m(x, slots=s)
    xn = m.norm_inputs(x)
    k, v = m.to_k(xn), m.to_v(xn)
    q = m.to_q(m.norm_slots(s))
    a = torch.softmax(q @ k.transpose(1, 2) / 8**0.5, dim=1) + 1e-8  # over slots
    u = (a / a.sum(-1, keepdim=True)) @ v
    s1 = m.gru(u.reshape(8, 8), s.reshape(8, 8)).view(2, 4, 8)
    want = s1 + m.mlp(m.norm_mlp(s1))
    torch.testing.assert_close(got, want)


def test_permuting_initial_slots_permutes_the_output_slots():
    m = make()
    x, s = rand(2, 10, 6, seed=1), rand(2, 4, 8, seed=2)
    perm = torch.tensor([2, 0, 3, 1])
    out, attn = m(x, slots=s)
    out_p, attn_p = m(x, slots=s[:, perm])
    torch.testing.assert_close(out_p, out[:, perm])
    torch.testing.assert_close(attn_p, attn[:, perm])


def test_permuting_inputs_leaves_slots_unchanged():
    m = make()
    x, s = rand(2, 10, 6, seed=1), rand(2, 4, 8, seed=2)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(3))
    out, attn = m(x, slots=s)
    out_p, attn_p = m(x[:, perm], slots=s)
    torch.testing.assert_close(out_p, out)
    torch.testing.assert_close(attn_p, attn[:, :, perm])


def test_image_inputs_and_bad_inputs():
    m = make()
    _, attn = m(rand(2, 3, 4, 6, seed=1), generator=torch.Generator().manual_seed(0))
    assert attn.shape == (2, 4, 12)
    with pytest.raises(ValueError, match=r"\[B, N, 6\]"):
        m(rand(2, 10, 5))
    with pytest.raises(ValueError, match="slots must be"):
        m(rand(2, 10, 6), slots=rand(2, 4, 7))


def make_smtc(**kw):
    torch.manual_seed(0)
    return SMTCSlotAttention(6, slot_dim=8, n_slots=3, iters=4, instances_per_slot=2, mlp_hidden=16, **kw).double()


def test_smtc_has_no_gru_and_semantic_slots_start_at_the_means():
    m = make_smtc()
    assert not any("gru" in n for n, _ in m.named_parameters())
    x = rand(2, 10, 6, seed=1)
    s = m.mu.expand(2, 3, 8)
    xn = m.norm_inputs(x)
    k, v = m.to_k(xn), m.to_v(xn)
    a = torch.softmax(m.attention_logits(k, s), 1) + 1e-8
    s1 = s + (a / a.sum(-1, keepdim=True)) @ v  # s <- s + U, no GRU
    s1 = s1 + m.mlp(m.norm_mlp(s1))
    got, _ = m.iterate(s, k, v, iters=1)
    torch.testing.assert_close(got, s1)


def test_smtc_detach_trick_keeps_values_and_cuts_gradient_to_the_last_iteration():
    x = rand(2, 10, 6, seed=1)
    a, b = make_smtc(), make_smtc(detach_trick=False)
    oa, ob = a(x, generator=torch.Generator().manual_seed(0)), b(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(oa["semantic"], ob["semantic"])
    # gradient of the semantic slots w.r.t. the inputs: with the trick, only the last iteration counts
    xg = x.clone().requires_grad_(True)
    xn = a.norm_inputs(xg)
    k, v = a.to_k(xn), a.to_v(xn)
    s0 = a.mu.expand(2, 3, 8)
    with torch.no_grad():
        pre, _ = a.iterate(s0, k, v, iters=3)
    last, _ = a.step(pre - s0.detach() + s0, k, v)
    g_want = torch.autograd.grad(last.sum(), xg)[0]
    g_got = torch.autograd.grad(a(xg, generator=torch.Generator().manual_seed(0))["semantic"].sum(), xg)[0]
    g_full = torch.autograd.grad(b(xg, generator=torch.Generator().manual_seed(0))["semantic"].sum(), xg)[0]
    torch.testing.assert_close(g_got, g_want)
    assert (g_full - g_got).abs().max() > 1e-6


def test_smtc_instance_slots_only_attend_inside_their_semantic_mask():
    m = make_smtc(threshold=0.3)
    out = m(rand(2, 12, 6, seed=4) * 3, generator=torch.Generator().manual_seed(1))
    assert out["instance"].shape == (2, 3, 2, 8) and out["instance_attn"].shape == (2, 3, 2, 12)
    mask = out["instance_mask"]
    assert torch.equal(mask[:, :, 0], out["semantic_attn"] > 0.3)
    attn = out["instance_attn"]
    assert bool((attn[~mask] == 0).all())
    seen = mask.any(2).any(1)  # [B, N]
    torch.testing.assert_close(attn.sum((1, 2))[seen], torch.ones_like(attn.sum((1, 2))[seen]))
    assert bool((attn.sum((1, 2))[~seen] == 0).all())
