"""How many steps the all-softmax control of hybrid-ratio needs to learn MQAR, against depth and learning rate.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hybrid_ratio_mqar_steps.py --seq-len 128 --pairs 8 32 \
        --vocab 512 --d-model 64 --layers 2 --batch 64 --steps 3000 --out /tmp/mqar_steps.jsonl     # CPU
    python3 benchmarks/hybrid_ratio_mqar_steps.py --device cuda --d-model 128 --layers 8 2 --steps 3000 9000 \
        --lrs 5e-4 1e-3 2e-3 4e-3 --budget 400 --out $OUT/control.jsonl --plot $OUT/control.png   # GPU

Trains softmax stacks (attnzoo.repro._lm.small_lm, the study's builder: MLP ratio 2, RoPE, n_heads query and
kv heads) on the study's MQAR mix (`mqar_mix`: equal shares of the two difficulties) with the study's trainer
defaults (AdamW, warmup 10% + cosine over the schedule, weight decay 0.1, batch --batch, seed --seed, one
initialisation for every lr, as the study builds each stack). For every (layers, steps) of --layers x --steps
the learning rates --lrs train as one group (attnzoo.train.group.train_many: each member equals train_lm alone;
on CUDA each step is replayed from a CUDA graph), evaluated on the hard test set every --eval-every steps, a
member leaving the group once it reaches --target. Prints and appends one JSON line per evaluation (kind
"eval": layers, schedule, lr, step, recall_hard, seconds) and one per member at its end (kind "final", with
recall_easy). It measures the step at which recall crosses 0.5 / 0.9, which sizes the study's full-size plan
(hybrid-ratio's full size trains 8-layer d=128 stacks at lr 2e-3 for 3000 steps; its all-softmax control
reached 0.044 there, 2026-12-07, results/repro/hybrid-ratio/full-h100-3000steps/). --budget seconds skips the
(layers, steps) groups that would start after it is spent.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from attnzoo.repro._lm import eval_loss_acc, mqar_mix, small_lm
from attnzoo.train import TrainConfig
from attnzoo.train.group import train_many


def _plot(rows: list[dict], path: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = sorted({(r["layers"], r["schedule"]) for r in rows})
    fig, axes = plt.subplots(1, len(configs), figsize=(4.2 * len(configs), 3.4), squeeze=False, sharey=True)
    for ax, (layers, schedule) in zip(axes[0], configs):
        for lr in sorted({r["lr"] for r in rows}):
            pts = [(r["step"], r["recall_hard"]) for r in rows
                   if (r["layers"], r["schedule"], r["lr"]) == (layers, schedule, lr)]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=f"lr {lr:g}")
        ax.set_title(f"softmax, {layers} layers, {schedule}-step schedule", fontsize=9)
        ax.set_xlabel("step")
        ax.axhline(0.5, color="grey", lw=0.5, ls=":")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("MQAR recall (hard test set)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--pairs", type=int, nargs=2, default=(8, 32))
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, nargs="+", default=[2])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, nargs="+", default=[3000], help="schedule lengths (each trained in full)")
    ap.add_argument("--lr", type=float, default=None, help="one learning rate (same as --lrs LR)")
    ap.add_argument("--lrs", type=float, nargs="+", default=None, help="learning rates trained as one group")
    ap.add_argument("--n-train", type=int, default=65536)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--target", type=float, default=0.99, help="a member stops at this hard recall")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init", choices=("default", "gpt2"), default="default",
                    help="LanguageModel's init: default (nn.Linear's) or gpt2 (N(0, 0.02), residual outputs scaled)")
    ap.add_argument("--mlp-ratio", type=float, default=2.0, help="the blocks' MLP ratio (the study's: 2; 0: none)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", type=float, default=None, help="seconds; later (layers, steps) groups are skipped")
    ap.add_argument("--out", default=None, help="JSON lines file to append to")
    ap.add_argument("--plot", default=None, help="PNG of hard recall vs step, one panel per (layers, steps)")
    a = ap.parse_args(argv)
    lrs = a.lrs or [a.lr if a.lr is not None else 2e-3]
    if a.lrs and a.lr is not None:
        ap.error("give --lr or --lrs, not both")
    if any(v < 1 for v in (*a.layers, *a.steps, a.batch, a.eval_every)):
        ap.error("--layers, --steps, --batch and --eval-every must be >= 1")
    if a.device == "cpu":
        torch.set_num_threads(1)
    train, tests = mqar_mix(seq_len=a.seq_len, pairs=tuple(a.pairs), vocab=a.vocab, n_train=a.n_train, n_test=256,
                            seed=a.seed)
    easy, hard = a.pairs
    setting = {k: v for k, v in vars(a).items() if k not in ("out", "plot", "layers", "steps", "lr", "lrs", "budget")}
    rows, t_start = [], time.perf_counter()

    def emit(row):
        print(json.dumps(row), flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")

    for layers in a.layers:
        for steps in a.steps:
            if a.budget is not None and time.perf_counter() - t_start > a.budget:
                emit({**setting, "kind": "skipped", "layers": layers, "schedule": steps, "reason": "budget"})
                continue
            models = []
            for _ in lrs:                     # one initialisation for every lr, as the study builds a stack
                torch.manual_seed(a.seed)
                models.append(small_lm("softmax", vocab=a.vocab, d_model=a.d_model, n_layers=layers, n_heads=a.heads,
                                       mlp_ratio=a.mlp_ratio, init=a.init))
            cfg = TrainConfig(steps=steps, batch_size=a.batch, lr=lrs[0], weight_decay=0.1,
                              warmup_steps=max(1, steps // 10), eval_every=a.eval_every, eval_batch_size=64,
                              target_accuracy=a.target, seed=a.seed, device=a.device)
            t0 = time.perf_counter()

            def on_eval(step, i, _loss, acc, layers=layers, steps=steps, t0=t0):
                row = {**setting, "kind": "eval", "layers": layers, "schedule": steps, "lr": lrs[i], "step": step,
                       "recall_hard": acc, "seconds": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                emit(row)

            results, note = train_many(models, lrs=lrs, train=train, test=tests[hard], config=cfg, on_eval=on_eval,
                                       graph=torch.device(a.device).type == "cuda")
            for lr, m, r in zip(lrs, models, results):
                emit({**setting, "kind": "final", "layers": layers, "schedule": steps, "lr": lr, "steps": r.steps,
                      "stopped": r.stopped, "recall_hard": r.accuracy,
                      "recall_easy": eval_loss_acc(m, tests[easy], device=a.device)[1],
                      "group_note": note, "graph_note": getattr(train_many, "graph_note", None),
                      "seconds": round(time.perf_counter() - t0, 1)})
            if a.plot:
                _plot(rows, a.plot)


if __name__ == "__main__":
    main()
