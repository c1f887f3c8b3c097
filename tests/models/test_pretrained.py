"""save_pretrained / from_pretrained: bit-exact round trips for every model class and every mixer,
clear errors for folders that cannot be trusted, atomic writes."""

from __future__ import annotations

import json
import os

import pytest
import torch

import attnzoo
from attnzoo.models import LanguageModel, load_pretrained
from attnzoo.models import pretrained as P
from attnzoo.models.encoder import Encoder
from attnzoo.models.sequence_classifier import SequenceClassifier

HYBRID = dict(vocab_size=40, d_model=32, n_layers=4, mixer="gated_deltanet*3+softmax",
              mixer_kwargs={"gated_deltanet": {"n_heads": 2}, "softmax": {"n_heads": 4, "n_kv_heads": 2}},
              mlp_ratio=2.0, norm_eps=1e-5)


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


def perturb(model, seed=0):
    """Weights unlike a fresh init, so that a loader that ignored the file would be caught."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def hybrid(**over):
    torch.manual_seed(0)
    return perturb(LanguageModel(**{**HYBRID, **over})).eval()


def test_hybrid_lm_round_trips_bit_exactly_with_its_config(tmp_path):
    lm = hybrid()
    lm.save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]  # no temp file left behind
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["attnzoo_class"] == "LanguageModel" and config["attnzoo_version"] == attnzoo.__version__
    assert config["init"]["mixer_kwargs"] == HYBRID["mixer_kwargs"] and config["init"]["norm_eps"] == 1e-5
    assert config["layers"] == ["gated_deltanet"] * 3 + ["softmax"]
    lm2 = LanguageModel.from_pretrained(tmp_path)
    assert not lm2.training and lm2.layer_names == lm.layer_names
    assert_same_weights(lm, lm2)
    ids = torch.randint(0, 40, (2, 11))
    assert torch.equal(lm(ids), lm2(ids))
    assert torch.equal(lm.generate(ids[:, :5], 6, temperature=0), lm2.generate(ids[:, :5], 6, temperature=0))
    fresh = LanguageModel(**HYBRID).eval()
    assert not torch.equal(fresh(ids), lm2(ids))  # the weights came from the file, not from the init
    assert type(load_pretrained(tmp_path)) is LanguageModel


@pytest.mark.parametrize("name", attnzoo.list_mixers())
def test_every_mixer_round_trips_with_its_example_kwargs(tmp_path, name):
    kwargs = attnzoo.get_card(name).example_kwargs
    torch.manual_seed(1)
    lm = perturb(LanguageModel(30, 32, 1, mixer=name, mixer_kwargs={name: kwargs}, mlp_ratio=0)).eval()
    lm.save_pretrained(tmp_path)
    lm2 = LanguageModel.from_pretrained(tmp_path)
    assert_same_weights(lm, lm2)
    ids = torch.randint(0, 30, (2, 16))
    with torch.no_grad():
        assert torch.equal(lm(ids), lm2(ids))


def test_list_pattern_and_bfloat16_round_trip(tmp_path):
    torch.manual_seed(2)
    lm = LanguageModel(30, 32, 3, mixer=[("sliding_window", 2), ("gla", 1)],
                       mixer_kwargs={"sliding_window": {"window": 3, "n_heads": 2}, "gla": {"gate_rank": 4}})
    lm = perturb(lm).to(torch.bfloat16).eval()
    lm.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["init"]["mixer"] == [["sliding_window", 2], ["gla", 1]]
    lm2 = LanguageModel.from_pretrained(tmp_path)
    assert lm2.embed.weight.dtype == torch.bfloat16
    assert_same_weights(lm, lm2)
    ids = torch.randint(0, 30, (1, 9))
    assert torch.equal(lm(ids), lm2(ids))


def test_encoder_round_trips(tmp_path):
    torch.manual_seed(3)
    enc = perturb(Encoder(32, 2, mixer="gla+softmax", mixer_kwargs={"gla": {"n_heads": 2}, "softmax": {"n_heads": 2}},
                          mlp_ratio=1.5)).eval()
    enc.save_pretrained(tmp_path)
    enc2 = Encoder.from_pretrained(tmp_path)
    assert "architectures" not in json.loads((tmp_path / "config.json").read_text())  # no transformers class for it
    assert_same_weights(enc, enc2)
    x = torch.randn(2, 10, 32)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    assert torch.equal(enc(x, mask=mask), enc2(x, mask=mask))


def test_sequence_classifier_round_trips(tmp_path):
    torch.manual_seed(4)
    clf = perturb(SequenceClassifier(5, 32, 2, mixer="mamba,softmax", mixer_kwargs={"mamba": {"d_state": 4}},
                                     n_outputs=3)).eval()
    clf.save_pretrained(tmp_path)
    clf2 = SequenceClassifier.from_pretrained(tmp_path)
    assert_same_weights(clf, clf2)
    x, observed = torch.randn(2, 8, 5), torch.rand(2, 8, 5) > 0.3
    assert torch.equal(clf(x, observed), clf2(x, observed))
    assert clf2(x, observed).shape == (2, 8, 3)


def test_saving_again_overwrites_and_saving_refuses_non_json_kwargs(tmp_path):
    hybrid().save_pretrained(tmp_path)
    lm = hybrid(mlp_ratio=1.0)
    lm.save_pretrained(tmp_path)
    assert_same_weights(lm, LanguageModel.from_pretrained(tmp_path))
    bad = LanguageModel(20, 16, 1, mixer="sliding_window", mixer_kwargs={"sliding_window": {"window": 4, "n_heads": 2}})
    bad.init_config["mixer_kwargs"]["sliding_window"]["window"] = (4,)  # a tuple would come back as a list
    with pytest.raises(ValueError, match="JSON"):
        bad.save_pretrained(tmp_path / "bad")
    assert not (tmp_path / "bad" / "config.json").exists()


# ---------------------------------------------------------------------------------------------
# errors

def saved(tmp_path):
    hybrid().save_pretrained(tmp_path)
    return tmp_path


def edit_config(directory, fn):
    path = directory / "config.json"
    config = json.loads(path.read_text())
    fn(config)
    path.write_text(json.dumps(config))


def test_unknown_mixer_is_named(tmp_path):
    d = saved(tmp_path)
    edit_config(d, lambda c: c["init"].update(mixer="gated_deltanett*3+softmax"))
    with pytest.raises(ValueError, match=r"config.json.*unknown mixer 'gated_deltanett'.*did you mean gated_deltanet"):
        LanguageModel.from_pretrained(d)


def test_shape_mismatch_is_named(tmp_path):
    d = saved(tmp_path)
    edit_config(d, lambda c: c["init"].update(mlp_ratio=3.0))  # the MLPs the config builds are wider than the file's
    with pytest.raises(ValueError, match=r"model.safetensors does not match.*shape mismatch blocks.0.mlp.w13.weight: "
                                         r"file \(128, 32\), config builds \(192, 32\)"):
        LanguageModel.from_pretrained(d)
    edit_config(d, lambda c: c["init"].update(mlp_ratio=0))  # no MLPs at all: the file has tensors the model lacks
    with pytest.raises(ValueError, match=r"unexpected \['blocks.0.mlp.w13.weight'"):
        LanguageModel.from_pretrained(d)


def test_newer_format_version_asks_for_an_upgrade(tmp_path):
    d = saved(tmp_path)
    edit_config(d, lambda c: c.update(attnzoo_format_version=P.FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=rf"attnzoo_format_version {P.FORMAT_VERSION + 1}, newer.*upgrade attnzoo"):
        LanguageModel.from_pretrained(d)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json not found"):
        LanguageModel.from_pretrained(tmp_path / "nothing")
    d = saved(tmp_path)
    os.remove(d / "model.safetensors")
    with pytest.raises(FileNotFoundError, match=r"model.safetensors not found"):
        LanguageModel.from_pretrained(d)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors_names_the_file(tmp_path, damage):
    d = saved(tmp_path)
    path = d / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x80\x02pickle?" + bytes(64))
    with pytest.raises(ValueError, match=rf"{path}.* not a readable safetensors file"):
        LanguageModel.from_pretrained(d)


def test_other_bad_configs(tmp_path):
    d = saved(tmp_path)
    with pytest.raises(ValueError, match="holds a LanguageModel, not a Encoder"):
        Encoder.from_pretrained(d)
    edit_config(d, lambda c: c["init"]["mixer_kwargs"]["softmax"].update(n_headz=4))
    with pytest.raises(ValueError, match=r"cannot build LanguageModel.*n_headz"):
        LanguageModel.from_pretrained(d)
    edit_config(d, lambda c: c.update(model_type="bert"))
    with pytest.raises(ValueError, match="not an attnzoo config"):
        LanguageModel.from_pretrained(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        LanguageModel.from_pretrained(d)


# ---------------------------------------------------------------------------------------------
# atomic writes

def test_writes_go_through_a_synced_temp_file_then_a_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(P.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")
                                                                  if os.path.exists("/proc/self/fd") else fd)),
                                                   real_fsync(fd))[1])
    monkeypatch.setattr(P.os, "replace", lambda a, b: (events.append(("replace", str(a), str(b))),
                                                       real_replace(a, b))[1])
    hybrid().save_pretrained(tmp_path)
    replaced = [e for e in events if e[0] == "replace"]
    assert [os.path.basename(e[2]) for e in replaced] == ["model.safetensors", "config.json"]
    for _, tmp, final in replaced:
        assert os.path.dirname(tmp) == os.path.dirname(final) and tmp != final
        i = events.index(("replace", tmp, final))
        assert ("fsync", tmp) in events[:i]  # the data reached the disk before the rename
        assert ("fsync", str(tmp_path)) in events[i:]  # and the rename itself is synced


def test_a_failed_write_leaves_the_previous_model_whole(tmp_path, monkeypatch):
    old = hybrid()
    old.save_pretrained(tmp_path)

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(P, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        hybrid(mlp_ratio=1.0).save_pretrained(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert_same_weights(old, LanguageModel.from_pretrained(tmp_path))
