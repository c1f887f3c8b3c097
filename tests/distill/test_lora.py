import pytest
import torch
from torch import nn

from attnzoo.distill.lora import LoRALinear, apply_lora, lora_parameters, merge_lora
from attnzoo.models.lm import LanguageModel


def _lm():
    torch.manual_seed(0)
    return LanguageModel(vocab_size=50, d_model=32, n_layers=2, mixer="softmax",
                         mixer_kwargs={"softmax": {"n_heads": 2}})


def test_fresh_lora_is_the_base_model_and_only_adapters_train():
    lm = _lm()
    ids = torch.randint(0, 50, (2, 9))
    ref = lm(ids)
    names = apply_lora(lm)
    assert len(names) == 8 and all(isinstance(lm.get_submodule(n), LoRALinear) for n in names)
    assert torch.equal(lm(ids), ref)
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    assert len(lora_parameters(lm)) == 16


def test_merged_equals_unmerged():
    lm = _lm()
    ids = torch.randint(0, 50, (2, 9))
    apply_lora(lm, r=4, alpha=8)
    with torch.no_grad():
        for p in lora_parameters(lm):
            p.normal_(0, 0.2)
    wrapped = lm(ids)
    merge_lora(lm)
    assert not any(isinstance(m, LoRALinear) for m in lm.modules())
    assert torch.allclose(lm(ids), wrapped, atol=1e-5)
    # the merged model is a plain LanguageModel again: it saves and reloads
    assert set(lm.state_dict()) == set(_lm().state_dict())


def test_lora_with_bias_and_dotted_targets():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(5, 4)
    names = apply_lora(model, targets=("2",), r=2)
    assert names == ["2"]
    with torch.no_grad():
        model[2].lora_B.normal_()
    y = model(x)
    merge_lora(model)
    assert torch.allclose(model(x), y, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_lora(nn.Sequential(nn.Linear(2, 2)), targets=("q_proj",))
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(2, 2), r=0)
