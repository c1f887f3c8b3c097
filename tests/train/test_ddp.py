"""DDP with two gloo processes on the CPU equals one process on the whole batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnzoo.models import LanguageModel
from attnzoo.tasks.mqar import mqar_splits
from attnzoo.train import TrainConfig, train_lm

CFG = {"steps": 4, "batch_size": 16, "lr": 3e-3, "eval_every": 2, "warmup_steps": 1, "seed": 0}


def _model():
    torch.manual_seed(0)
    return LanguageModel(32, 16, 2, "softmax", mixer_kwargs={"softmax": {"n_heads": 2}}, mlp_ratio=0)


def _data():
    return mqar_splits(seq_len=16, num_pairs=2, vocab_size=32, num_train=128, num_test=40, seed=0)


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train, test = _data()
        lm = _model()
        r = train_lm(lm, train=train, test=test, config=TrainConfig(**CFG, checkpoint_dir=os.path.join(out_dir, "ck")))
        torch.save({"state": lm.state_dict(), "accuracy": r.accuracy, "loss": r.loss},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")
    train, test = _data()
    lm = _model()
    ref = train_lm(lm, train=train, test=test, config=TrainConfig(**CFG))
    for name, want in lm.state_dict().items():
        torch.testing.assert_close(r0["state"][name], r1["state"][name], rtol=0, atol=0)   # ranks agree
        torch.testing.assert_close(r0["state"][name], want, rtol=1e-5, atol=1e-6)           # = full batch
    assert abs(r0["accuracy"] - ref.accuracy) < 1e-9 and abs(r0["loss"] - ref.loss) < 1e-4
    assert (tmp_path / "ck" / "latest.json").exists()      # rank 0 wrote the checkpoint
