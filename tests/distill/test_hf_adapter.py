import copy

import pytest
import torch

from attnzoo.distill.hf_adapter import StudentSelfAttention, padding_mask, replace_attention
from attnzoo.distill.lora import apply_lora, merge_lora
from attnzoo.distill.minilm import neighbour_agreement
from attnzoo.distill.stages import AttentionTransferLoss

transformers = pytest.importorskip("transformers", reason="the hf extra (transformers) is not installed")


def _tiny_bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    return transformers.BertModel(cfg).eval()


@pytest.mark.parametrize("name", ["lawcat", "gla", "gated_deltanet"])
def test_every_attention_layer_is_replaced_and_runs(name):
    teacher = _tiny_bert()
    student = copy.deepcopy(teacher)
    pairs, new = replace_attention(student, name, teacher=teacher)
    layers = student.encoder.layer
    assert len(pairs) == len(layers) == 3
    assert all(isinstance(layer.attention.self, StudentSelfAttention) for layer in layers)
    assert all(t is teacher.encoder.layer[i].attention.self for i, (t, _) in enumerate(pairs))
    fwd = layers[0].attention.self.mixer.forward_mixer
    t_attn = teacher.encoder.layer[0].attention.self
    assert torch.equal(fwd.q_proj.weight, t_attn.query.weight) and torch.equal(fwd.q_proj.bias, t_attn.query.bias)
    assert new and not any("q_proj" in n or "v_proj" in n for n in new)
    ids = torch.randint(1, 60, (2, 10))
    out = student(input_ids=ids).last_hidden_state
    assert out.shape == (2, 10, 32) and torch.isfinite(out).all()
    # stage-1 loss runs on the captured teacher calls
    loss, parts = AttentionTransferLoss(pairs, lambda b: teacher(input_ids=b))(ids)
    loss.backward()
    assert parts["mse"] > 0


def test_padding_is_invisible_to_real_tokens():
    teacher = _tiny_bert()
    student = copy.deepcopy(teacher)
    replace_attention(student, "lawcat")
    ids = torch.randint(1, 60, (1, 8))
    mask = torch.ones(1, 8, dtype=torch.long)
    padded = torch.cat([ids, torch.randint(1, 60, (1, 4))], 1)
    pmask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.long)], 1)
    a = student(input_ids=ids, attention_mask=mask).last_hidden_state
    b = student(input_ids=padded, attention_mask=pmask).last_hidden_state[:, :8]
    assert torch.allclose(a, b, atol=1e-5)


def test_lora_on_the_adapter_merges_exactly():
    student = _tiny_bert()
    replace_attention(student, "gla")
    apply_lora(student, targets=("q_proj", "k_proj", "v_proj", "attention.output.dense"), r=2)
    with torch.no_grad():
        for n, p in student.named_parameters():
            if n.endswith("lora_B"):
                p.normal_(0, 0.1)
    ids = torch.randint(1, 60, (2, 7))
    y = student(input_ids=ids).last_hidden_state
    merge_lora(student)
    assert torch.allclose(student(input_ids=ids).last_hidden_state, y, atol=1e-5)


def test_padding_mask_forms_and_neighbours():
    assert padding_mask(None, (1, 3)) is None
    m4 = torch.zeros(1, 1, 3, 3)
    m4[..., 2] = torch.finfo(torch.float32).min
    assert padding_mask(m4, (1, 3)).tolist() == [[True, True, False]]
    assert padding_mask(torch.tensor([[1, 1, 0]]), (1, 3)).tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="attention mask"):
        padding_mask(torch.ones(2, 3), (1, 3))
    e = torch.nn.functional.normalize(torch.randn(10, 4), dim=-1)
    assert neighbour_agreement(e, e) == (1.0, 1.0)
    with pytest.raises(ValueError, match="BERT-style"):
        replace_attention(torch.nn.Linear(2, 2), "gla")
