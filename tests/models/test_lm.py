import pytest
import torch

from attnzoo.models import LanguageModel, parse_pattern


def test_pattern_forms():
    assert parse_pattern("softmax", 3) == ["softmax"] * 3
    assert parse_pattern("sliding_window*3+softmax", 8) == (["sliding_window"] * 3 + ["softmax"]) * 2
    assert parse_pattern("sliding_window,sliding_window,softmax", 3) == ["sliding_window"] * 2 + ["softmax"]
    assert parse_pattern([("sliding_window", 3), ("softmax", 1)], 4) == ["sliding_window"] * 3 + ["softmax"]
    with pytest.raises(ValueError, match="multiple"):
        parse_pattern("sliding_window*3+softmax", 6)
    with pytest.raises(ValueError, match="did you mean"):
        parse_pattern("softmx*2", 2)


def test_greedy_generation_with_states_equals_rerunning_the_full_sequence():
    torch.manual_seed(0)
    lm = LanguageModel(50, 32, 3, mixer="sliding_window*2+gated_softmax",
                       mixer_kwargs={"sliding_window": {"window": 4}}).double().eval()
    prompt = torch.randint(0, 50, (2, 7))
    out = lm.generate(prompt, max_new_tokens=12, temperature=0)
    ref = prompt
    with torch.no_grad():
        for _ in range(12):
            ref = torch.cat([ref, lm(ref)[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, ref)


def test_sampling_is_seeded_and_top_k_restricts():
    torch.manual_seed(0)
    lm = LanguageModel(50, 32, 2).eval()
    prompt = torch.randint(0, 50, (1, 5))
    a = lm.generate(prompt, 8, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(1))
    b = lm.generate(prompt, 8, temperature=1.0, top_k=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == (1, 13)
    top1 = lm.generate(prompt, 8, temperature=1.0, top_k=1)
    assert torch.equal(top1, lm.generate(prompt, 8, temperature=0))


def test_forward_shapes_errors_and_bidirectional_cannot_generate():
    lm = LanguageModel(20, 16, 2, mixer_kwargs={"softmax": {"n_heads": 2}})
    assert lm(torch.randint(0, 20, (3, 6))).shape == (3, 6, 20)
    with pytest.raises(ValueError, match="integer"):
        lm(torch.randn(3, 6))
    with pytest.raises(ValueError, match="not in the pattern"):
        LanguageModel(20, 16, 2, mixer_kwargs={"gla_typo": {}})
    enc = LanguageModel(20, 16, 2, mixer_kwargs={"softmax": {"causal": False}})
    with pytest.raises(ValueError, match="causal"):
        enc.generate(torch.randint(0, 20, (1, 4)), 3)
    assert lm.aux_loss() is None
    assert lm.state_bytes(10) == 2 * (10 * (2 * 16 * 4 + 1 + 8) + 8)  # 2 layers: K, V, valid, kpos; seen


def test_learned_positions_and_layer_kwargs_round_trip_and_decode(tmp_path):
    """max_positions adds learned absolute positions (decode continues them: generate == greedy re-runs);
    layer_kwargs cycles a mixer's kwargs over its layers; both survive save/load."""
    lm = LanguageModel(64, 16, 4, "base_conv", mixer_kwargs={"base_conv": {"l_max": 32}},
                       layer_kwargs={"base_conv": [{"kernel_size": 3}, {"kernel_size": -1}]}, max_positions=32)
    assert [b.mixer.config["kernel_size"] for b in lm.blocks] == [3, -1, 3, -1]
    x = torch.randint(0, 64, (2, 20))
    lm.save_pretrained(tmp_path)
    assert torch.equal(LanguageModel.from_pretrained(tmp_path)(x), lm(x))
    shifted = torch.cat([x[:, :1], x], 1)[:, :20]
    assert not torch.allclose(lm(shifted)[:, 1:], lm(x)[:, :19])      # positions matter
    y, z = lm.generate(x[:, :5], 8, temperature=0), x[:, :5]
    for _ in range(8):
        z = torch.cat([z, lm(z)[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(y, z)
    with pytest.raises(ValueError, match="beyond max_positions=32"):
        lm(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="layer_kwargs must map mixers of the pattern"):
        LanguageModel(64, 16, 2, "softmax", layer_kwargs={"gla": [{}]})
    with pytest.raises(ValueError, match="max_positions must be an integer"):
        LanguageModel(64, 16, 2, "softmax", max_positions=0)


def test_gpt2_init_scales_linear_weights_and_the_residual_outputs(tmp_path):
    import math

    torch.manual_seed(0)
    default = LanguageModel(64, 128, 4, "softmax", mlp_ratio=4.0)
    torch.manual_seed(0)
    same = LanguageModel(64, 128, 4, "softmax", mlp_ratio=4.0, init="default")
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), same.state_dict().values()))
    lm = LanguageModel(64, 128, 4, "softmax", mlp_ratio=4.0, init="gpt2")
    for name, p in lm.named_parameters():
        if name.endswith(("o_proj.weight", "w2.weight")):
            assert abs(p.std().item() / (0.02 / math.sqrt(8)) - 1) < 0.1, name
        elif name.endswith(("q_proj.weight", "w13.weight")):
            assert abs(p.std().item() / 0.02 - 1) < 0.1, name
    assert abs(default.blocks[0].mixer.q_proj.weight.std().item() / 0.02 - 1) > 1.0   # nn.Linear's: ~0.05
    lm.save_pretrained(tmp_path)
    assert '"gpt2"' in (tmp_path / "config.json").read_text()
    back = LanguageModel.from_pretrained(tmp_path)
    x = torch.randint(0, 64, (2, 9))
    assert back.init_config["init"] == "gpt2" and torch.equal(back(x), lm(x))
    with pytest.raises(ValueError, match="init must be one of"):
        LanguageModel(64, 32, 1, "softmax", init="xavier")


def test_gpt2_init_keeps_the_rate_setting_linears_of_mixers():
    torch.manual_seed(0)
    a = LanguageModel(32, 32, 2, "mamba", mlp_ratio=0.0)
    torch.manual_seed(0)
    b = LanguageModel(32, 32, 2, "mamba", mlp_ratio=0.0, init="gpt2")
    for blk_a, blk_b in zip(a.blocks, b.blocks):
        assert torch.equal(blk_a.mixer.dt_proj.bias, blk_b.mixer.dt_proj.bias)
        assert torch.equal(blk_a.mixer.dt_proj.weight, blk_b.mixer.dt_proj.weight)
        assert not torch.equal(blk_a.mixer.out_proj.weight, blk_b.mixer.out_proj.weight)
