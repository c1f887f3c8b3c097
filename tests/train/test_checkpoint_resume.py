"""Checkpoints restore exactly, are durable, and their JSON + safetensors codec loses nothing."""

import hashlib
import json
import math
import os

import pytest
import torch

from attnzoo.train import TrainConfig, train_lm
from attnzoo.train import checkpoint as ckpt
from attnzoo.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from attnzoo.train.lamb import LAMB
from attnzoo.train.optim import build_optimizer
from attnzoo.train.state_codec import decode, encode
from tests.train.test_checkpoint import _same, _snapshot, _tiny, _trained, _untouched


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is ~100x faster than two fighting other processes for 2 cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _steps(model, opt, n, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randint(0, 32, (4, 8), generator=gen)
        loss = model(x).logsumexp(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_optimizer_state_round_trips_exactly(tmp_path, name):
    model, opt = _trained(name=name, steps=3)
    path = save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=3)
    other, other_opt = _trained(seed=5, name=name, steps=1)
    load_checkpoint(path, model=other, optimizer=other_opt)
    assert _same(other_opt.state_dict(), opt.state_dict())       # types too: int steps, tensor steps, tuples
    assert _same(dict(other.state_dict()), dict(model.state_dict()))


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_resume_equals_uninterrupted_bit_exactly(tmp_path, name):
    model, opt = _trained(name=name, steps=2)
    path = save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=2)
    _steps(model, opt, 3, seed=7)                                  # the uninterrupted run
    resumed = _tiny(seed=9)
    resumed_opt = build_optimizer(resumed, name=name, lr=1e-2, weight_decay=0.1)
    load_checkpoint(path, model=resumed, optimizer=resumed_opt)
    _steps(resumed, resumed_opt, 3, seed=7)
    assert _untouched(resumed, resumed_opt, _snapshot(model, opt))


def test_lamb_bf16_parameters_resume_with_float32_moments(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4).to(torch.bfloat16)
    opt = LAMB(model.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(2):
        model(torch.randn(3, 6, dtype=torch.bfloat16)).float().square().sum().backward()
        opt.step()
    path = save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=2)
    other = torch.nn.Linear(6, 4).to(torch.bfloat16)
    other_opt = LAMB(other.parameters(), lr=1e-2, weight_decay=0.1)
    load_checkpoint(path, model=other, optimizer=other_opt)
    assert other_opt.state[other.weight]["exp_avg"].dtype == torch.float32
    assert _same(other_opt.state_dict(), opt.state_dict())


def test_trainer_resume_with_lamb_equals_uninterrupted(tmp_path):
    from attnzoo.tasks.mqar import mqar_splits
    train, test = mqar_splits(seq_len=16, num_pairs=2, vocab_size=32, num_train=128, num_test=32, seed=0)
    cfg = {"steps": 6, "batch_size": 16, "lr": 3e-3, "eval_every": 3, "warmup_steps": 1, "optimizer": "lamb"}
    full = _tiny()
    r_full = train_lm(full, train=train, test=test, config=TrainConfig(**cfg))
    ck = str(tmp_path / "ck")

    def stop(step, loss):
        if step == 4:
            raise KeyboardInterrupt          # killed after the step-3 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_lm(_tiny(), train=train, test=test, config=TrainConfig(**cfg, checkpoint_dir=ck), on_step=stop)
    resumed = _tiny(seed=3)
    r_res = train_lm(resumed, train=train, test=test, config=TrainConfig(**cfg, checkpoint_dir=ck))
    assert _same(dict(resumed.state_dict()), dict(full.state_dict()))
    assert [h["step"] for h in r_res.history] == [3, 6] and r_res.loss == r_full.loss


def test_files_and_folders_are_fsynced_before_their_renames(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", (st.st_dev, st.st_ino)))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        return real_replace(src, dst)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    model, opt = _trained()
    path = save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=2)

    def ino(p):
        st = os.stat(p)
        return ("fsync", (st.st_dev, st.st_ino))
    folder_renamed = events.index(("replace", "step-00000002"))
    latest_renamed = events.index(("replace", "latest.json"))
    for name in ("model.safetensors", "trainer.safetensors", "trainer.json"):
        assert events.index(ino(os.path.join(path, name))) < folder_renamed, name
    assert events.index(ino(path)) < folder_renamed                        # the folder's entries
    assert events.index(ino(str(tmp_path / "latest.json"))) < latest_renamed
    parent = [i for i, e in enumerate(events) if e == ino(str(tmp_path))]
    assert any(folder_renamed < i < latest_renamed for i in parent)        # the folder's rename
    assert parent[-1] > latest_renamed                                     # latest.json's rename


def test_rotation_and_saving_a_step_again(tmp_path):
    model, opt = _trained()
    for step in (1, 2, 3):
        save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=step, keep=2)
    assert sorted(d for d in os.listdir(tmp_path) if d.startswith("step-")) == ["step-00000002", "step-00000003"]
    path = save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=3, extra={"again": True}, keep=2)
    assert latest_checkpoint(str(tmp_path)) == path
    assert load_checkpoint(path, model=model)["extra"] == {"again": True}
    assert sorted(os.listdir(tmp_path)) == ["latest.json", "step-00000002", "step-00000003"]    # no temp left
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=4, keep=0)


def _rewrite_meta(path, edit):
    """Edit trainer.json and re-sign it, as a forger (or a bug) would: only the checks behind the hash remain."""
    with open(os.path.join(path, "trainer.json")) as f:
        meta = json.load(f)
    edit(meta)
    meta["sha256"] = ckpt._digest(meta)
    with open(os.path.join(path, "trainer.json"), "w") as f:
        json.dump(meta, f)


def test_consistent_but_wrong_state_is_refused_and_rolled_back(tmp_path):
    model, opt = _trained()
    path = save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=2)

    def rename_a_step(meta):            # AdamW's __setstate__ fails on state without its 'step'
        state = meta["optimizer"]["state"]["$dict"][0][1]
        state["step_"] = state.pop("step")
    _rewrite_meta(path, rename_a_step)
    other, other_opt = _trained(seed=1)
    snap = _snapshot(other, other_opt)
    with pytest.raises(ValueError, match="trainer.json: AdamW refused the optimizer state"):
        load_checkpoint(path, model=other, optimizer=other_opt)
    assert _untouched(other, other_opt, snap)


def test_valid_hash_of_an_invalid_tensor_file_is_refused(tmp_path):
    model, opt = _trained()
    path = save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=2)
    junk = b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}"
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(junk)
    _rewrite_meta(path, lambda m: m["files"]["model.safetensors"].update(sha256=hashlib.sha256(junk).hexdigest()))
    with pytest.raises(ValueError, match="model.safetensors is not a valid safetensors file"):
        load_checkpoint(path, model=model, optimizer=opt)


def test_codec_keeps_types_and_bits():
    base = torch.arange(12, dtype=torch.float32)
    tree = {"step": 3, "lr": 1e-3, "flag": True, "none": None, "name": "x", "betas": (0.9, 0.999),
            "nested": [1, (2, [3.5])], "odd": {"$not_a_tag": 1, 7: "int key", (1, 2): "tuple key"},
            "special": [math.inf, -math.inf], "t0": torch.tensor(2.0), "bf16": torch.randn(2, 3).to(torch.bfloat16),
            "bool": torch.tensor([True, False]), "view": base[2:6], "same_storage": base[6:9],
            "empty": torch.zeros(0, 4)}
    json_tree, tensors = encode(tree)
    back = decode(json.loads(json.dumps(json_tree, allow_nan=False)), tensors)
    assert _same(back, tree)
    nan_back = decode(*encode({"x": math.nan}))
    assert math.isnan(nan_back["x"])


def test_codec_refuses_what_it_cannot_store_or_read():
    with pytest.raises(ValueError, match=r"extra\.bad: cannot store a set"):
        encode({"bad": {1, 2}}, where="extra")
    with pytest.raises(ValueError, match="tensor file does not hold"):
        decode({"$tensor": "t9"}, {})
    with pytest.raises(ValueError, match="nothing refers to"):
        decode({"a": 1}, {"t0": torch.zeros(1)})
    with pytest.raises(ValueError, match="unknown tag"):
        decode({"$eval": "__import__('os')"}, {})


def test_an_edited_value_in_trainer_json_is_caught(tmp_path):
    """A flipped digit keeps the JSON valid and every structure check happy: only its hash sees it."""
    model, opt = _trained()
    path = save_checkpoint(str(tmp_path), model=model, optimizer=opt, step=2)
    with open(os.path.join(path, "trainer.json")) as f:
        meta = json.load(f)
    meta["optimizer"]["param_groups"][0]["lr"] = 0.03
    with open(os.path.join(path, "trainer.json"), "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="trainer.json is damaged"):
        load_checkpoint(path, model=model, optimizer=opt)
