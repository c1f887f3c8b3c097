"""How many steps the all-softmax control of hybrid-ratio needs to learn MQAR (CPU, small width).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hybrid_ratio_mqar_steps.py --seq-len 128 --pairs 8 32 \
        --vocab 512 --d-model 64 --layers 2 --batch 64 --steps 3000 --out /tmp/mqar_steps.jsonl

Trains one softmax stack (attnzoo.repro._lm.small_lm) on the study's MQAR mix (`mqar_mix`: equal shares
of the two difficulties) with the study's trainer defaults (`train_lm`, AdamW, warmup 10% + cosine over
--steps, weight decay 0.1) and prints/appends the recall on each difficulty's test set every --eval-every
steps, with the wall time. It measures the step at which recall crosses 0.5 / 0.9 at this width, which
sizes the study's full-size step count (the full stack is wider and deeper: an estimate, not a proof).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from attnzoo.repro._lm import eval_loss_acc, mqar_mix, small_lm
from attnzoo.train import TrainConfig, train_lm


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--pairs", type=int, nargs=2, default=(8, 32))
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-train", type=int, default=65536)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON lines file to append to")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    train, tests = mqar_mix(seq_len=a.seq_len, pairs=tuple(a.pairs), vocab=a.vocab, n_train=a.n_train, n_test=256,
                            seed=a.seed)
    easy, hard = a.pairs
    torch.manual_seed(a.seed)
    model = small_lm("softmax", vocab=a.vocab, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads)
    t0 = time.perf_counter()
    setting = {k: v for k, v in vars(a).items() if k != "out"}

    def on_eval(step, _loss, acc_hard):
        row = {**setting, "step": step, "recall_hard": acc_hard,
               "recall_easy": eval_loss_acc(model, tests[easy], device="cpu")[1],
               "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    cfg = TrainConfig(steps=a.steps, batch_size=a.batch, lr=a.lr, weight_decay=0.1, warmup_steps=max(1, a.steps // 10),
                      eval_every=a.eval_every, eval_batch_size=64, seed=a.seed, device="cpu")
    train_lm(model, train=train, test=tests[hard], config=cfg, on_eval=on_eval)


if __name__ == "__main__":
    main()
