"""Train one model on MQAR with the library's trainer; runs alone or under torchrun (DDP).

    python benchmarks/train_mqar.py --mixer softmax --steps 800
    torchrun --nproc_per_node 2 benchmarks/train_mqar.py --mixer gated_deltanet*3+softmax --layers 4
"""

import argparse

import torch

from attnzoo.models import LanguageModel
from attnzoo.tasks.mqar import mqar_splits
from attnzoo.train import TrainConfig, train_lm
from attnzoo.train.distributed import finish_distributed, init_distributed


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mixer", default="softmax")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--vocab", type=int, default=128)
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--optimizer", default="adamw", choices=["adamw", "lamb"])
    p.add_argument("--checkpoint-dir")
    a = p.parse_args()
    device = init_distributed()
    try:
        train, test = mqar_splits(seq_len=a.seq_len, num_pairs=a.pairs, vocab_size=a.vocab, num_train=20_000,
                                  num_test=512)
        torch.manual_seed(0)
        lm = LanguageModel(a.vocab, a.d_model, a.layers, a.mixer, mlp_ratio=0)
        r = train_lm(lm, train=train, test=test, config=TrainConfig(
            steps=a.steps, batch_size=a.batch_size, lr=a.lr, optimizer=a.optimizer, eval_every=100,
            target_accuracy=0.99, device=device, checkpoint_dir=a.checkpoint_dir))
        if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
            print(f"{a.mixer}: accuracy {r.accuracy:.4f} after {r.steps} steps ({r.stopped}), {r.seconds:.1f} s")
    finally:
        finish_distributed()


if __name__ == "__main__":
    main()
