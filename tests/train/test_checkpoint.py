"""Checkpoints refuse what they must not trust: pickles, paths outside the folder, damaged files.

A refused checkpoint leaves the model and the optimizer exactly as they were (everything is read and
checked before anything is applied)."""

import copy
import json
import os
import re
import shutil

import pytest
import torch

from attnzoo.models import LanguageModel
from attnzoo.tasks.mqar import mqar_splits
from attnzoo.train import TrainConfig, train_lm
from attnzoo.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from attnzoo.train.optim import build_optimizer

FILES = ("model.safetensors", "trainer.safetensors", "trainer.json")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is ~100x faster than two fighting other processes for 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(seed=0, d_model=16):
    torch.manual_seed(seed)
    return LanguageModel(32, d_model, 2, "softmax", mixer_kwargs={"softmax": {"n_heads": 2}}, mlp_ratio=0)


def _trained(seed=0, name="adamw", steps=2, d_model=16):
    """A tiny LM (tied embeddings) and its optimizer after a few steps, so the state is not empty."""
    model = _tiny(seed, d_model)
    opt = build_optimizer(model, name=name, lr=1e-2, weight_decay=0.1)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 32, (4, 8), generator=gen)
        loss = model(x).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, opt


def _snapshot(model, opt):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, copy.deepcopy(opt.state_dict()))


def _same(a, b):
    """Bit-identical trees: same types, same values, tensors of the same dtype, shape and bits."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return (torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a, b))
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _untouched(model, opt, snap):
    weights, state = snap
    return _same({k: v for k, v in model.state_dict().items()}, weights) and _same(opt.state_dict(), state)


class _Payload:
    """Unpickling this object calls open(path, "w"): the file appearing proves the pickle ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _old_format_checkpoint(ck, marker):
    """An attnzoo checkpoint of the old layout whose trainer.pt carries a live payload."""
    from safetensors.torch import save_model
    model, _ = _trained()
    folder = os.path.join(ck, "step-00000002")
    os.makedirs(folder)
    save_model(model, os.path.join(folder, "model.safetensors"))
    torch.save({"optimizer": _Payload(str(marker)), "step": 2, "extra": {}}, os.path.join(folder, "trainer.pt"))
    with open(os.path.join(ck, "latest.json"), "w") as f:
        json.dump({"checkpoint": "step-00000002", "step": 2}, f)
    return folder


def test_the_payload_is_live(tmp_path):
    """The poisoned trainer.pt of the next test really runs code when unpickled."""
    folder = _old_format_checkpoint(str(tmp_path / "ck"), tmp_path / "proof")
    torch.load(os.path.join(folder, "trainer.pt"), weights_only=False)
    assert (tmp_path / "proof").exists()


def test_pickled_trainer_state_is_refused_without_running(tmp_path):
    ck, marker = str(tmp_path / "ck"), tmp_path / "pwned"
    folder = _old_format_checkpoint(ck, marker)
    model, opt = _trained(seed=1)
    snap = _snapshot(model, opt)
    with pytest.raises(ValueError, match="trainer.pt"):
        load_checkpoint(folder, model=model, optimizer=opt)
    assert not marker.exists()
    assert _untouched(model, opt, snap)
    train, test = mqar_splits(seq_len=16, num_pairs=2, vocab_size=32, num_train=32, num_test=8, seed=0)
    with pytest.raises(ValueError, match="trainer.pt"):     # the trainer's resume path refuses it too
        train_lm(_tiny(), train=train, test=test, config=TrainConfig(steps=4, batch_size=8, checkpoint_dir=ck))
    assert not marker.exists()


def test_no_pickle_in_the_package():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "attnzoo")
    banned = re.compile(r"torch\.(load|save)\(|^\s*(import|from)\s+(pickle|dill|cloudpickle)\b|\bpickle\.\w+\(",
                        re.M)
    hits = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            if n.endswith(".py"):
                with open(os.path.join(dirpath, n), encoding="utf-8") as f:
                    hits += [f"{n}: {m.group(0)}" for m in banned.finditer(f.read())]
    assert not hits


@pytest.fixture
def saved(tmp_path):
    """A checkpoint folder holding a trained LM and AdamW state, and the folder it lives in."""
    ck = str(tmp_path / "ck")
    model, opt = _trained()
    path = save_checkpoint(ck, model=model, optimizer=opt, step=2, extra={"seconds": 1.5})
    return ck, path


def _point_latest(ck, name):
    with open(os.path.join(ck, "latest.json"), "w") as f:
        json.dump({"checkpoint": name, "step": 2}, f)


@pytest.mark.parametrize("where", ["absolute", "dotdot", "nested_dotdot", "symlink", "etc"])
def test_latest_json_pointing_outside_is_refused(saved, tmp_path, where):
    ck, path = saved
    outside = str(tmp_path / "outside")
    shutil.copytree(path, outside)                      # a valid checkpoint, only in the wrong place
    name = {"absolute": outside, "dotdot": "../outside", "nested_dotdot": "step-00000002/../../outside",
            "symlink": "step-00000009", "etc": "/etc"}[where]
    if where == "symlink":
        os.symlink(outside, os.path.join(ck, "step-00000009"))
    _point_latest(ck, name)
    with pytest.raises(ValueError, match="latest.json"):
        latest_checkpoint(ck)


@pytest.mark.parametrize("content", ['{"checkpoint": ', '{"checkpoint": 3}', '[]', '{"checkpoint": "step-00000007"}'])
def test_bad_latest_json_raises_naming_it(saved, content):
    ck, _ = saved
    with open(os.path.join(ck, "latest.json"), "w") as f:
        f.write(content)
    with pytest.raises(ValueError, match="latest.json"):
        latest_checkpoint(ck)


def test_a_file_symlinked_out_of_the_folder_is_refused(saved, tmp_path):
    _, path = saved
    target = str(tmp_path / "elsewhere.safetensors")
    shutil.move(os.path.join(path, "model.safetensors"), target)
    os.symlink(target, os.path.join(path, "model.safetensors"))
    model, opt = _trained(seed=1)
    with pytest.raises(ValueError, match="model.safetensors"):
        load_checkpoint(path, model=model, optimizer=opt)


def _damage(path, name, how):
    full = os.path.join(path, name)
    if how == "delete":
        os.remove(full)
        return
    with open(full, "rb") as f:
        data = bytearray(f.read())
    if how == "truncate":
        data = data[: len(data) // 2]
    elif how == "flip":                         # one byte in the middle (tensor data or JSON text)
        data[len(data) // 2] ^= 0x01
    elif how == "garbage":
        data = bytearray(b"\x00\xff" * 40)
    with open(full, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("how", ["truncate", "flip", "delete", "garbage"])
@pytest.mark.parametrize("name", FILES)
def test_damaged_file_raises_naming_it_and_changes_nothing(saved, name, how):
    _, path = saved
    _damage(path, name, how)
    model, opt = _trained(seed=1)               # other weights and optimizer state than the checkpoint's
    snap = _snapshot(model, opt)
    with pytest.raises(ValueError, match=re.escape(name)):
        load_checkpoint(path, model=model, optimizer=opt)
    assert _untouched(model, opt, snap)


def test_model_of_other_shapes_is_refused_and_untouched(saved):
    _, path = saved
    model, opt = _trained(seed=1, d_model=8)    # the same parameter names, other shapes
    snap = _snapshot(model, opt)
    with pytest.raises(ValueError, match="does not match the model"):
        load_checkpoint(path, model=model, optimizer=opt)
    assert _untouched(model, opt, snap)


def test_other_optimizer_is_refused_and_untouched(saved):
    _, path = saved
    model, opt = _trained(seed=1, name="lamb")  # the checkpoint holds AdamW state
    snap = _snapshot(model, opt)
    with pytest.raises(ValueError, match="AdamW"):
        load_checkpoint(path, model=model, optimizer=opt)
    assert _untouched(model, opt, snap)


def test_other_param_groups_are_refused_and_untouched(saved):
    """The weights are fine and would load first in a loader that applies as it reads."""
    _, path = saved
    model, _ = _trained(seed=1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)      # one group, not the checkpoint's two
    model(torch.zeros(1, 4, dtype=torch.long)).sum().backward()
    opt.step()
    snap = _snapshot(model, opt)
    with pytest.raises(ValueError, match="parameter group"):
        load_checkpoint(path, model=model, optimizer=opt)
    assert _untouched(model, opt, snap)


def test_good_checkpoint_restores_model_and_optimizer(saved):
    ck, path = saved
    assert latest_checkpoint(ck) == path
    want_model, want_opt = _trained()
    model, opt = _trained(seed=1)
    meta = load_checkpoint(path, model=model, optimizer=opt)
    assert meta == {"step": 2, "extra": {"seconds": 1.5}}
    assert _untouched(model, opt, _snapshot(want_model, want_opt))
