import json
import os

import pytest
import torch

from attnzoo.models import LanguageModel
from attnzoo.tasks.mqar import mqar_splits
from attnzoo.train import TrainConfig, train_lm
from attnzoo.train.checkpoint import latest_checkpoint, load_checkpoint
from attnzoo.train.trainer import batch_indices, evaluate


def _tiny(seed=0):
    torch.manual_seed(seed)
    return LanguageModel(32, 16, 2, "softmax", mixer_kwargs={"softmax": {"n_heads": 2}}, mlp_ratio=0)


def _data():
    return mqar_splits(seq_len=16, num_pairs=2, vocab_size=32, num_train=256, num_test=64, seed=0)


def test_batch_order_depends_only_on_step():
    a = [batch_indices(s, n=10, batch_size=4, seed=1) for s in range(5)]
    assert torch.equal(batch_indices(3, n=10, batch_size=4, seed=1), a[3])
    epoch0 = torch.cat(a)[:10]
    assert sorted(epoch0.tolist()) == list(range(10))      # each epoch is a permutation


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    train, test = _data()
    cfg = {"steps": 12, "batch_size": 16, "lr": 3e-3, "eval_every": 4, "warmup_steps": 2, "seed": 0}
    full = _tiny()
    r_full = train_lm(full, train=train, test=test, config=TrainConfig(**cfg))

    ck = str(tmp_path / "ck")
    part = _tiny()

    def stop_at_8(step, loss):
        if step == 9:
            raise KeyboardInterrupt  # a kill after the step-8 checkpoint
    with pytest.raises(KeyboardInterrupt):
        train_lm(part, train=train, test=test, config=TrainConfig(**cfg, checkpoint_dir=ck), on_step=stop_at_8)
    with open(os.path.join(ck, "latest.json")) as f:
        assert json.load(f)["step"] == 8
    resumed = _tiny(seed=123)          # different init: everything must come from the checkpoint
    r_res = train_lm(resumed, train=train, test=test, config=TrainConfig(**cfg, checkpoint_dir=ck))
    assert r_res.steps == 12
    for (n, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    assert r_res.accuracy == r_full.accuracy
    assert [h["step"] for h in r_res.history] == [4, 8, 12]


def test_checkpoint_files_and_strict_load(tmp_path):
    train, test = _data()
    ck = str(tmp_path / "ck")
    train_lm(_tiny(), train=train, test=test, config=TrainConfig(steps=4, batch_size=8, eval_every=2,
                                                                checkpoint_dir=ck))
    path = latest_checkpoint(ck)
    assert sorted(os.listdir(path)) == ["model.safetensors", "trainer.json", "trainer.safetensors"]
    assert [d for d in os.listdir(ck) if d.startswith("step-")] == ["step-00000004"]   # older ones removed
    assert not [d for d in os.listdir(ck) if "tmp" in d]
    other = LanguageModel(32, 16, 1, "softmax", mlp_ratio=0)
    with pytest.raises(ValueError, match="does not match the model"):
        load_checkpoint(path, model=other)


def test_early_stop_and_time_budget():
    train, test = _data()
    r = train_lm(_tiny(), train=train, test=test,
                 config=TrainConfig(steps=50, batch_size=8, eval_every=1, target_accuracy=1e-9))
    assert r.stopped == "target" and r.steps == 1
    r = train_lm(_tiny(), train=train, test=test, config=TrainConfig(steps=10_000, batch_size=8, max_seconds=0.5,
                                                                  eval_every=10_000))  # one eval: the last
    assert r.stopped == "time" and r.steps < 10_000 and len(r.history) == 1


def test_aux_loss_is_added(monkeypatch):
    train, test = _data()
    lm = _tiny()
    seen = []
    monkeypatch.setattr(lm, "aux_loss", lambda: seen.append(1) or lm.embed.weight.sum() * 0 + 100.0)
    train_lm(lm, train=train, test=test, config=TrainConfig(steps=2, batch_size=8))
    assert len(seen) == 2


def test_bad_config_raises():
    train, test = _data()
    with pytest.raises(ValueError, match="lr must be positive"):
        train_lm(_tiny(), train=train, test=test, config=TrainConfig(lr=0.0))
    with pytest.raises(ValueError, match="\\[N, T\\]"):
        train_lm(_tiny(), train=(train[0][:, :3], train[1]), test=test, config=TrainConfig())


def test_softmax_solves_mqar_t64_4_pairs():
    """Zoology's first setting at a small vocabulary: a 2-layer softmax model reaches 0.99."""
    torch.set_num_threads(1)
    train, test = mqar_splits(seq_len=64, num_pairs=4, vocab_size=128, num_train=20_000, num_test=256, seed=0)
    torch.manual_seed(0)
    lm = LanguageModel(128, 64, 2, "softmax", mixer_kwargs={"softmax": {"n_heads": 1}}, mlp_ratio=0)
    before = evaluate(lm, *test)[1]
    r = train_lm(lm, train=train, test=test, config=TrainConfig(
        steps=1200, batch_size=64, lr=3e-3, warmup_steps=20, eval_every=50, target_accuracy=0.99, seed=0))
    assert before < 0.1
    assert r.accuracy >= 0.99, r.history


def test_bf16_autocast_path_trains():
    """The CUDA path uses bf16 autocast; on the CPU it can be forced, which exercises the same code."""
    train, test = _data()
    r = train_lm(_tiny(), train=train, test=test, config=TrainConfig(steps=3, batch_size=8, eval_every=3, amp=True))
    assert r.steps == 3 and 0.0 < r.loss < 10.0
