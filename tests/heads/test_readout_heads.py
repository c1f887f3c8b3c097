"""Label attention + LDAM, attention pooling (plain, gated, typed, stacked), X-Pool."""

import pytest
import torch
import torch.nn.functional as F

from attnzoo.heads.attention_pool import AttentionPool, StackedAttentionPool
from attnzoo.heads.label_attention import LabelAttention, ldam_bce_loss, ldam_margins
from attnzoo.heads.xpool import XPool, symmetric_infonce


def r(*s, seed=0):
    return torch.randn(*s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_label_attention_matches_hand_computation_and_ignores_padding():
    torch.manual_seed(0)
    la = LabelAttention(8, 3).double()
    h = r(2, 5, 8)
    logits, attn = la(h)
    scores = la.w2(torch.tanh(la.w1(h))).transpose(1, 2)
    a = torch.softmax(scores, -1)
    expect = torch.einsum("bcs,bsd,cd->bc", a, h, la.head_weight) + la.head_bias
    assert torch.allclose(logits, expect) and torch.allclose(attn.sum(-1), torch.ones(2, 3, dtype=torch.float64))
    hp = torch.cat([h, r(2, 3, 8, seed=1) * 10], 1)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, 5:] = False
    lp, ap = la(hp, mask)
    assert torch.allclose(lp, logits) and (ap[..., 5:] == 0).all()
    with pytest.raises(ValueError, match="mask"):
        la(h, torch.ones(2, 4, dtype=torch.bool))


def test_given_label_queries_are_the_attention_queries():
    E = r(3, 8, seed=2)
    la = LabelAttention(8, 3, label_queries=E).double()
    h = r(2, 5, 8)
    _, attn = la(h)
    assert torch.allclose(attn, torch.softmax(torch.einsum("cd,bsd->bcs", E, h), -1))
    with pytest.raises(ValueError, match="label_queries"):
        LabelAttention(8, 3, label_queries=E[:2])


def test_ldam_margins_and_loss():
    m = ldam_margins(torch.tensor([1, 16, 0]))
    assert torch.allclose(m, torch.tensor([3.0, 1.5, 3.0]))
    logits, y = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[1.0, 0.0, 1.0]])
    loss = ldam_bce_loss(logits, y, m)
    shifted = torch.tensor([[0.5 - 3.0, -1.0, 2.0 - 3.0]])
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(shifted, y))
    with pytest.raises(ValueError):
        ldam_bce_loss(logits, y, m[:2])


@pytest.mark.parametrize("gated", [True, False])
def test_attention_pool_is_a_masked_permutation_invariant_weighted_mean(gated):
    torch.manual_seed(0)
    pool = AttentionPool(8, hidden=16, gated=gated).double()
    h = r(2, 6, 8)
    out, a = pool(h)
    assert torch.allclose(a.sum(-1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(out, torch.einsum("bn,bnd->bd", a, h))
    perm = torch.randperm(6)
    out_p, _ = pool(h[:, perm])
    assert torch.allclose(out_p, out)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    out_m, a_m = pool(h, mask=mask)
    assert (a_m[0, 4:] == 0).all() and torch.allclose(out_m[0], pool(h[:1, :4])[0][0])


def test_typed_and_stacked_pools():
    torch.manual_seed(0)
    pool = AttentionPool(8, n_types=3).double()
    h = r(2, 4, 8)
    t0, t1 = torch.zeros(2, 4, dtype=torch.long), torch.tensor([[0, 1, 2, 0]] * 2)
    assert not torch.allclose(pool(h, types=t0)[0], pool(h, types=t1)[0])
    with pytest.raises(ValueError, match="n_types"):
        AttentionPool(8)(h, types=t0)
    st = StackedAttentionPool(8, 2).double()
    out, top, per = st([h, r(2, 7, 8, seed=3)])
    assert out.shape == (2, 8) and top.shape == (2, 2) and per[1].shape == (2, 7)
    with pytest.raises(ValueError, match="context sets"):
        st([h])


def test_xpool_repools_each_video_per_text():
    torch.manual_seed(0)
    xp = XPool(8, n_heads=2, dropout=0.0).double().eval()
    t, v = r(3, 8), r(4, 5, 8, seed=1)
    psi, a = xp.pool(t, v)
    assert psi.shape == (4, 3, 8) and torch.allclose(a.sum(-1), torch.ones(4, 3, dtype=torch.float64))
    assert not torch.allclose(psi[:, 0], psi[:, 1])  # a different text pools the same video differently
    same = v[:1, :1].expand(1, 5, 8)  # identical frames: pooling cannot depend on the text
    psi_same, _ = xp.pool(t, same)
    assert torch.allclose(psi_same[:, 0], psi_same[:, 2])
    sims = xp(t, v)
    assert sims.shape == (3, 4) and sims.abs().max() <= 1 + 1e-9
    for lin in (xp.q, xp.k, xp.v, xp.o, xp.lin):  # identity initialisation
        assert torch.equal(lin.weight, torch.eye(8, dtype=torch.float64))


def test_symmetric_infonce():
    sims = r(4, 4)
    scale = torch.tensor(0.0, dtype=torch.float64)
    target = torch.arange(4)
    hand = 0.5 * (F.cross_entropy(sims, target) + F.cross_entropy(sims.t(), target))
    assert torch.allclose(symmetric_infonce(sims, scale), hand)
    assert symmetric_infonce(torch.eye(4, dtype=torch.float64) * 5, scale) < symmetric_infonce(sims, scale)
    with pytest.raises(ValueError, match="square"):
        symmetric_infonce(sims[:3], scale)
