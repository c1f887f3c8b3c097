import pytest
import torch

from attnzoo.heads.swapmix import context_reliance, swapmix


def test_swapmix_changes_only_real_irrelevant_objects():
    g = torch.Generator().manual_seed(0)
    obj = torch.randn(3, 5, 4, generator=g)
    rel = torch.zeros(3, 5, dtype=torch.bool)
    rel[:, 1] = True
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[:, 4] = False
    bank = torch.randn(10, 4, generator=g) + 100
    out = swapmix(obj, rel, bank, p=1.0, mask=mask, generator=g)
    assert torch.equal(out[:, 1], obj[:, 1]) and torch.equal(out[:, 4], obj[:, 4])
    assert (out[:, [0, 2, 3]] > 50).all()  # all swapped for bank rows
    assert torch.equal(swapmix(obj, rel, bank, p=0.0, generator=g), obj)
    with pytest.raises(ValueError):
        swapmix(obj, rel, bank[:, :3])


def test_context_reliance_measures_dependence_on_irrelevant_objects():
    g = torch.Generator().manual_seed(0)
    obj = torch.randn(50, 4, 3, generator=g)
    rel = torch.zeros(50, 4, dtype=torch.bool)
    rel[:, 0] = True
    bank = torch.randn(100, 3, generator=g)
    only_relevant = lambda o: (o[:, 0, 0] > 0).long()  # noqa: E731
    uses_context = lambda o: (o[:, 1:, 0].sum(1) > 0).long()  # noqa: E731
    assert context_reliance(only_relevant, obj, rel, bank, generator=g) == 0.0
    assert context_reliance(uses_context, obj, rel, bank, generator=g) > 0.3


def test_swapmix_dims_keeps_the_other_features():
    g = torch.Generator().manual_seed(0)
    obj, bank = torch.randn(2, 3, 4, generator=g), torch.randn(5, 4, generator=g) + 100
    out = swapmix(obj, torch.zeros(2, 3, dtype=torch.bool), bank, dims=torch.tensor([0, 1]), generator=g)
    assert torch.equal(out[..., 2:], obj[..., 2:]) and (out[..., :2] > 50).all()
