"""The transformers path: hf.AutoModelForCausalLM.from_pretrained on a folder written by
LanguageModel.save_pretrained, generate() equal to LanguageModel.generate, decoding on the states.

transformers is imported inside the `hf` fixture, not at collection: importing its PreTrainedModel
imports triton, and the Triton interpreter tests (tests/ops/test_gla_triton*.py) need to set
TRITON_INTERPRET=1 before the first import of triton in the process.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import attnzoo
from attnzoo.models import LanguageModel
from attnzoo.models.encoder import Encoder


@pytest.fixture(scope="module")
def hf():
    pytest.importorskip("transformers", reason="the transformers wrapper needs the optional extra attnzoo[hf]")
    from transformers import AutoConfig, AutoModelForCausalLM

    import attnzoo.hf  # registers the auto classes

    return SimpleNamespace(AutoConfig=AutoConfig, AutoModelForCausalLM=AutoModelForCausalLM,
                           Cache=attnzoo.hf.AttnzooCache, Config=attnzoo.hf.AttnzooConfig,
                           ForCausalLM=attnzoo.hf.AttnzooForCausalLM)


PATTERN = dict(vocab_size=48, d_model=32, n_layers=4, mixer="gated_deltanet*3+softmax",
               mixer_kwargs={"gated_deltanet": {"n_heads": 2}, "softmax": {"n_heads": 4, "n_kv_heads": 2}},
               mlp_ratio=2.0)


def trained_like(seed=0, **over):
    torch.manual_seed(seed)
    lm = LanguageModel(**{**PATTERN, **over})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # sharper logits than a fresh init, so greedy decoding is not a constant token
        for p in lm.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return lm.eval()


class ForwardSpy:
    """Records the input shape and whether a state was given, for every LanguageModel forward."""

    def __init__(self, lm):
        self.calls = []
        self.inner = lm.forward
        lm.forward = self

    def __call__(self, ids, **kw):
        self.calls.append((tuple(ids.shape), kw.get("state") is not None))
        return self.inner(ids, **kw)


def test_auto_classes_load_a_saved_language_model_bit_exactly(hf, tmp_path):
    lm = trained_like()
    lm.save_pretrained(tmp_path)
    assert isinstance(hf.AutoConfig.from_pretrained(tmp_path), hf.Config)
    model = hf.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(model, hf.ForCausalLM) and not model.training
    ref = lm.state_dict()
    got = model.model.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    ids = torch.randint(0, 48, (2, 9))
    assert torch.equal(model(ids).logits, lm(ids))


@pytest.mark.parametrize("mixer", ["gated_deltanet*3+softmax", "mamba+sliding_window"])
def test_generate_matches_language_model_and_decodes_one_token_per_step_on_the_states(hf, tmp_path, mixer):
    kwargs = {} if mixer == PATTERN["mixer"] else {"mixer_kwargs": {"mamba": {"d_state": 4},
                                                                    "sliding_window": {"window": 3, "n_heads": 2}}}
    lm = trained_like(1, mixer=mixer, **kwargs)
    lm.save_pretrained(tmp_path)
    model = hf.AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = torch.randint(0, 48, (3, 7))
    new = 12
    ref = lm.generate(prompt, new, temperature=0)
    assert len(set(ref[:, 7:].flatten().tolist())) > 1  # a decoding that could be told apart from a wrong one
    spy = ForwardSpy(model.model)
    out = model.generate(prompt, max_new_tokens=new, do_sample=False)
    assert torch.equal(out, ref)
    # one prefill over the whole prompt, then each further token a T=1 forward that continues the states
    assert spy.calls == [((3, 7), False)] + [((3, 1), True)] * (new - 1)


def test_cache_counts_tokens_and_left_padding_is_masked(hf, tmp_path):
    lm = trained_like(2)
    lm.save_pretrained(tmp_path)
    model = hf.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 48, (2, 6))
    out = model(ids, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert isinstance(cache, hf.Cache) and cache.get_seq_length() == 6 and len(cache) == 4
    # row 0 is padded on the left by 2: it must generate what its 4 real tokens generate alone
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False)
    assert torch.equal(out[0, 6:], lm.generate(ids[:1, 2:], 5, temperature=0)[0, 4:])
    assert torch.equal(out[1, 6:], lm.generate(ids[1:], 5, temperature=0)[0, 6:])


def test_labels_give_the_next_token_loss(hf, tmp_path):
    lm = trained_like(3)
    model = hf.ForCausalLM.from_model(lm)
    ids = torch.randint(0, 48, (2, 8))
    loss = model(ids, labels=ids).loss
    ref = torch.nn.functional.cross_entropy(lm(ids)[:, :-1].reshape(-1, 48), ids[:, 1:].reshape(-1))
    assert torch.allclose(loss, ref)


def test_transformers_save_loads_back_in_both_worlds(hf, tmp_path):
    lm = trained_like(4)
    model = hf.ForCausalLM.from_model(lm)
    model.save_pretrained(tmp_path)  # transformers' writer: weights under "model.", its own config keys
    back = LanguageModel.from_pretrained(tmp_path)
    ref = lm.state_dict()
    assert all(torch.equal(ref[k], v) for k, v in back.state_dict().items())
    again = hf.AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = torch.randint(0, 48, (1, 5))
    assert torch.equal(again.generate(prompt, max_new_tokens=6, do_sample=False), lm.generate(prompt, 6, temperature=0))


def test_clear_errors(hf, tmp_path):
    Encoder(32, 2).save_pretrained(tmp_path / "enc")
    with pytest.raises(ValueError, match="wraps a LanguageModel; this config holds a Encoder"):
        hf.AutoModelForCausalLM.from_pretrained(tmp_path / "enc")
    trained_like().save_pretrained(tmp_path / "lm")
    path = tmp_path / "lm" / "config.json"
    config = json.loads(path.read_text())
    config["init"]["mixer"] = "softmx*4"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="unknown mixer 'softmx'"):
        hf.AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    config["init"]["mixer"] = PATTERN["mixer"]
    config["attnzoo_format_version"] = 99
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match="attnzoo_format_version 99, newer"):
        hf.AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    model = hf.ForCausalLM.from_model(trained_like())
    with pytest.raises(ValueError, match="AttnzooCache"):
        model(torch.zeros(1, 1, dtype=torch.long), past_key_values=[(torch.zeros(1), torch.zeros(1))])


def test_beam_search_reorders_the_states(hf):
    lm = trained_like(5).double()
    model = hf.ForCausalLM.from_model(lm)
    prompt = torch.randint(0, 48, (2, 6))
    kw = dict(max_new_tokens=6, num_beams=3, do_sample=False, num_return_sequences=2)
    spy = ForwardSpy(lm)
    with_states = model.generate(prompt, **kw)
    assert spy.calls[0] == ((6, 6), False) and all(c == ((6, 1), True) for c in spy.calls[1:])
    rerun = model.generate(prompt, use_cache=False, **kw)  # the whole sequence each step, no state
    assert spy.calls[-1] == ((6, 11), False)
    assert torch.equal(with_states, rerun)


@pytest.mark.parametrize("name", [n for n in attnzoo.list_mixers() if attnzoo.get_card(n).causal])
def test_every_causal_mixer_loads_and_generates_through_transformers(hf, tmp_path, name):
    # transformers builds the model on the meta device before loading: a mixer whose constructor
    # needs real tensor values would fail here
    lm = trained_like(6, vocab_size=40, n_layers=1, mixer=name,
                      mixer_kwargs={name: attnzoo.get_card(name).example_kwargs})
    lm.save_pretrained(tmp_path)
    model = hf.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(lm.state_dict().values(), model.model.state_dict().values()))
    prompt = torch.randint(0, 40, (2, 5))
    assert torch.equal(model.generate(prompt, max_new_tokens=4, do_sample=False), lm.generate(prompt, 4, temperature=0))
