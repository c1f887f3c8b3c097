"""TrainConfig.compile: the training forward under torch.compile trains the same model as eager (aot_eager
here: no code generation, seconds), and the zoo's preset opt-in reaches the runs it names."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from attnzoo.models import LanguageModel
from attnzoo.tasks.mqar import mqar_splits
from attnzoo.train import TrainConfig, train_lm


def _tiny():
    torch.manual_seed(0)
    return LanguageModel(32, 16, 2, "gla", mixer_kwargs={"gla": {"n_heads": 2}}, mlp_ratio=0)


def test_compiled_training_equals_eager():
    train, test = mqar_splits(seq_len=16, num_pairs=2, vocab_size=32, num_train=128, num_test=32, seed=0)
    cfg = {"steps": 4, "batch_size": 16, "lr": 3e-3, "eval_every": 2, "warmup_steps": 1, "seed": 0}
    eager, compiled = _tiny(), _tiny()
    r_e = train_lm(eager, train=train, test=test, config=TrainConfig(**cfg))
    torch._dynamo.reset()
    try:
        r_c = train_lm(compiled, train=train, test=test, config=TrainConfig(**cfg, compile="aot_eager"))
    finally:
        torch._dynamo.reset()
    assert [h["train_loss"] for h in r_c.history] == pytest.approx([h["train_loss"] for h in r_e.history], rel=1e-5)
    for (n, a), b in zip(eager.state_dict().items(), compiled.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=n)


def test_compile_setting_is_checked():
    with pytest.raises(ValueError, match="compile must be"):
        TrainConfig(compile=1).check()
    from attnzoo.bench.zoo.presets import get_preset

    with pytest.raises(ValueError, match="compile must be"):
        replace(get_preset("quick"), compile="mamba")
    assert get_preset("quick", compile=("mamba",)).compile == ("mamba",) and get_preset("quick").compile == ()
