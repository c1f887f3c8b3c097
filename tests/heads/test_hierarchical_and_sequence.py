import pytest
import torch

from attnzoo.heads.hierarchical import HierarchicalEncoder
from attnzoo.models.sequence_classifier import SequenceClassifier


def test_hierarchical_ignores_padding_blocks_and_tokens():
    torch.manual_seed(0)
    m = HierarchicalEncoder(40, 16, mixer_kwargs={"softmax": {"n_heads": 2}}).double().eval()
    ids = torch.randint(1, 40, (2, 3, 5))
    doc, _ = m(ids)
    ids_p = torch.cat([torch.cat([ids, torch.randint(1, 40, (2, 3, 2))], 2), torch.randint(1, 40, (2, 1, 7))], 1)
    mask = torch.zeros(2, 4, 7, dtype=torch.bool)
    mask[:, :3, :5] = True
    doc_p, _ = m(ids_p, mask)
    assert torch.allclose(doc, doc_p, atol=1e-10)


def test_block_vectors_do_not_see_other_blocks_but_the_document_does():
    torch.manual_seed(0)
    m = HierarchicalEncoder(40, 16, mixer_kwargs={"softmax": {"n_heads": 2}}).double().eval()
    ids = torch.randint(1, 40, (1, 3, 5))
    ids2 = ids.clone()
    ids2[0, 2] = (ids2[0, 2] + 1) % 40
    b1, _ = m.encode_blocks(ids)
    b2, _ = m.encode_blocks(ids2)
    assert torch.equal(b1[0, :2], b2[0, :2]) and not torch.allclose(b1[0, 2], b2[0, 2])
    assert not torch.allclose(m(ids)[1][0, 0], m(ids2)[1][0, 0])


def test_masked_block_loss_learns_and_errors():
    torch.manual_seed(0)
    m = HierarchicalEncoder(30, 16, block_layers=1, doc_layers=1, mixer_kwargs={"softmax": {"n_heads": 2}})
    ids = torch.randint(1, 30, (4, 4, 6))
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = m.masked_block_loss(ids, mask_prob=0.5, generator=g).item()
    for _ in range(40):
        loss = m.masked_block_loss(ids, mask_prob=0.5, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    with pytest.raises(ValueError, match="long"):
        m(ids.float())
    with pytest.raises(ValueError, match="max_blocks"):
        m(torch.randint(1, 30, (1, 65, 3)))


def test_sequence_classifier_is_causal_and_ignores_unobserved_values():
    torch.manual_seed(0)
    c = SequenceClassifier(4, 16, mixer_kwargs={"softmax": {"n_heads": 2}}).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    obs = torch.rand(2, 9, 4, generator=g) > 0.4
    y = c(x, obs)
    x2 = x.clone()
    x2[:, 5:] += 1
    assert torch.equal(c(x2, obs)[:, :5], y[:, :5])
    x3 = torch.where(obs, x, torch.full_like(x, 1e6))
    assert torch.equal(c(x3, obs), y)
    with pytest.raises(ValueError, match="causal"):
        SequenceClassifier(4, 16, mixer_kwargs={"softmax": {"causal": False}})
    with pytest.raises(ValueError, match="observed"):
        c(x, obs.double())
