import pytest
import torch

from attnzoo.distill.swap import linearize_encoder, linearize_lm, student_kwargs
from attnzoo.models.encoder import Encoder
from attnzoo.models.lm import LanguageModel


def _teacher(n_layers=2):
    torch.manual_seed(0)
    return LanguageModel(vocab_size=40, d_model=32, n_layers=n_layers, mixer="softmax",
                         mixer_kwargs={"softmax": {"n_heads": 2}})


@pytest.mark.parametrize("name", ["lawcat", "gla", "gated_deltanet"])
def test_projections_come_from_the_teacher_and_the_rest_is_new(name):
    teacher = _teacher()
    student, new = linearize_lm(teacher, name)
    for i, block in enumerate(student.blocks):
        t = teacher.blocks[i]
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            assert torch.equal(getattr(block.mixer, proj).weight, getattr(t.mixer, proj).weight)
            assert f"blocks.{i}.mixer.{proj}.weight" not in new
        assert torch.equal(block.mlp.w13.weight, t.mlp.w13.weight)
    assert torch.equal(student.embed.weight, teacher.embed.weight)
    assert new and all(".mixer." in n for n in new)
    assert type(student.blocks[0].mixer).registry_name == name


def test_hybrid_keeps_teacher_softmax_layers_whole():
    teacher = _teacher(4)
    student, new = linearize_lm(teacher, "gla*3+softmax")
    assert student.layer_names == ["gla", "gla", "gla", "softmax"]
    assert not any(n.startswith("blocks.3.") for n in new)
    ids = torch.randint(0, 40, (1, 12))
    x = teacher.embed(ids)
    assert torch.equal(student.blocks[3].mixer(x), teacher.blocks[3].mixer(x))


def test_based_without_own_parameters_trains_its_feature_projections():
    teacher = _teacher()
    _, new = linearize_lm(teacher, "based")
    assert new == {f"blocks.{i}.mixer.{p}.weight" for i in range(2) for p in ("q_proj", "k_proj")}


@pytest.mark.parametrize("name", ["lawcat", "gated_deltanet", "based", "gla*1+softmax"])
def test_student_keeps_the_contract(name):
    """Causality and state continuation after conversion; save/load round trip."""
    student, _ = linearize_lm(_teacher(), name)
    torch.manual_seed(1)
    ids = torch.randint(0, 40, (2, 15))
    full = student(ids)
    ids2 = ids.clone()
    ids2[:, 9:] = (ids2[:, 9:] + 1) % 40
    assert torch.allclose(student(ids2)[:, :9], full[:, :9], atol=1e-5)
    a, state = student(ids[:, :7], return_state=True)
    b = student(ids[:, 7:], state=state)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-4)


def test_saved_student_reloads(tmp_path):
    student, _ = linearize_lm(_teacher(), "gla")
    student.save_pretrained(str(tmp_path))
    again = LanguageModel.from_pretrained(str(tmp_path))
    ids = torch.randint(0, 40, (1, 6))
    assert torch.equal(again(ids), student(ids))


def test_encoder_student_starts_at_the_teacher_scale():
    torch.manual_seed(0)
    teacher = Encoder(d_model=32, n_layers=1, mixer="softmax", mixer_kwargs={"softmax": {"n_heads": 2}})
    student, new = linearize_encoder(teacher, "lawcat")
    bi = student.blocks[0].mixer
    o_t = teacher.blocks[0].mixer.o_proj.weight
    assert torch.allclose(bi.forward_mixer.o_proj.weight, 0.5 * o_t)
    assert torch.allclose(bi.backward_mixer.o_proj.weight, 0.5 * o_t)
    assert student(torch.randn(2, 5, 32)).shape == (2, 5, 32)


def test_student_kwargs_match_heads_and_overrides():
    assert student_kwargs("gla", n_heads=4, head_dim=16, d_model=64) == {"n_heads": 4, "expand_k": 1.0,
                                                                          "expand_v": 1.0}
    assert student_kwargs("lawcat", n_heads=4, head_dim=8, d_model=64, overrides={"feature_dim": 4}) == {
        "n_heads": 4, "head_dim": 8, "feature_dim": 4}
    with pytest.raises(ValueError):
        linearize_lm(_teacher(), "no_such_mixer")
