"""Experiment 1 of issue #15: linearize our own causal softmax byte-LM (LoLCATs arXiv:2410.10254,
LAWCAT arXiv:2509.18467) and measure what each student keeps.

Teacher: a softmax LanguageModel (RoPE) trained on the stdlib byte corpus (attnzoo.tasks.bytes)
mixed with passkey prompts (attnzoo.tasks.passkey) at the training length T, so it can retrieve.
Each student pattern (e.g. "lawcat", "gla", "gated_deltanet", "based", "gla*3+softmax") is
  stage 1: swapped in (swap.py) and trained on the layer-wise output MSE, new parameters only;
  stage 2: LoRA r=8/alpha=16 on q, k, v, o (then merged), next-token CE on the same mixture;
  scratch: the same pattern from a random init, every parameter, on as many tokens as stages 1+2.
Reported per model: validation bits per byte, passkey digit accuracy at 1x, 4x and 16x T, and the
tokens each stage used as a share of the teacher's training tokens.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from attnzoo.distill.lora import apply_lora, merge_lora
from attnzoo.distill.losses import DistillWeights
from attnzoo.distill.stages import (
    AttentionTransferLoss, StageConfig, freeze_except, lm_finetune_loss, load_stage1, train_stage,
)
from attnzoo.distill.swap import linearize_lm
from attnzoo.models.lm import LanguageModel
from attnzoo.tasks.bytes import StdlibBytes, bits_per_byte
from attnzoo.tasks.passkey import generate_passkey, passkey_overhead
from attnzoo.train import TrainConfig, evaluate, train_lm


@dataclass(frozen=True)
class ByteLMSize:
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    teacher_steps: int
    batch_size: int
    stage1_steps: int
    stage2_steps: int
    teacher_lr: float = 3e-3
    stage1_lr: float = 1e-2
    stage2_lr: float = 1e-3
    stage_batch: int | None = None     # batch of the distillation stages and scratch (None: batch_size)
    passkey_share: float = 0.25       # fraction of every batch that is a passkey prompt
    corpus_bytes: int = 4_000_000
    val_windows: int = 64
    passkey_examples: int = 32
    lengths: tuple = (1, 4, 16)        # passkey at these multiples of seq_len
    eval_batch: int = 8


BYTE_SIZES = {
    "test": ByteLMSize(d_model=32, n_layers=2, n_heads=2, seq_len=112, teacher_steps=30, batch_size=8,
                       stage1_steps=30, stage2_steps=10, corpus_bytes=300_000, val_windows=8, passkey_examples=4,
                       lengths=(1, 2)),
    # the first CPU run: a short teacher, 50 + 50 distillation steps (1.7% + 1.7% of its tokens)
    "cpu-short": ByteLMSize(d_model=64, n_layers=4, n_heads=4, seq_len=128, teacher_steps=1500, batch_size=16,
                            stage1_steps=50, stage2_steps=50, stage_batch=8, passkey_share=0.375),
    "cpu": ByteLMSize(d_model=64, n_layers=4, n_heads=4, seq_len=128, teacher_steps=3000, batch_size=16,
                      stage1_steps=200, stage2_steps=200, stage_batch=8, passkey_share=0.375),
    "gpu": ByteLMSize(d_model=256, n_layers=6, n_heads=4, seq_len=512, teacher_steps=4000, batch_size=32,
                      stage1_steps=300, stage2_steps=300, corpus_bytes=8_000_000, val_windows=256,
                      passkey_examples=128),
}


def teacher_lm(size: ByteLMSize) -> LanguageModel:
    return LanguageModel(vocab_size=256, d_model=size.d_model, n_layers=size.n_layers, mixer="softmax",
                         mixer_kwargs={"softmax": {"n_heads": size.n_heads}})


class ByteMixture:
    """Batches of stdlib-byte windows with a share of passkey prompts, the same for every seed/step."""

    def __init__(self, size: ByteLMSize, *, seed: int, batch_size: int | None = None):
        self.size, self.seed = size, seed
        self.batch_size = batch_size or size.batch_size
        self.corpus = StdlibBytes(max_bytes=size.corpus_bytes)

    def batch(self, step: int):
        s = self.size
        n_key = int(round(self.batch_size * s.passkey_share))
        x, y = self.corpus.windows("train", seq_len=s.seq_len, num=self.batch_size - n_key,
                                   seed=self.seed * 1_000_003 + step)
        if n_key:
            kx, ky = generate_passkey(n_key, seq_len=s.seq_len, seed=self.seed * 7_919 + step + 1)
            x, y = torch.cat([x, kx]), torch.cat([y, ky])
        return x, y

    def pool(self, steps: int):
        """All batches of `steps` steps stacked: (x [steps*B, T], y) in step order (for train_lm)."""
        xs, ys = zip(*(self.batch(i) for i in range(steps)))
        return torch.cat(xs), torch.cat(ys)


def validation(size: ByteLMSize, corpus: StdlibBytes):
    return corpus.windows("validation", seq_len=size.seq_len, num=size.val_windows, seed=12345)


def passkey_sets(size: ByteLMSize):
    """{multiple: (inputs, labels)} at each length (a fixed seed per length, depths drawn uniformly)."""
    out = {}
    for m in size.lengths:
        L = size.seq_len * m
        if L < passkey_overhead(5) + 1:
            continue
        out[m] = generate_passkey(size.passkey_examples, seq_len=L, seed=999 + m)
    return out


@torch.no_grad()
def evaluate_lm(model, size: ByteLMSize, val, keys, device) -> dict:
    """{'bpb', 'passkey': {'1x': acc, ...}} (passkey = digit accuracy of the teacher-forced answer)."""
    loss, _ = evaluate(model, *val, batch_size=size.eval_batch, device=device)
    pk = {}
    for m, (x, y) in keys.items():
        bs = max(1, size.eval_batch // m)
        _, acc = evaluate(model, x, y, batch_size=bs, device=device)
        pk[f"{m}x"] = round(acc, 4)
    return {"bpb": round(bits_per_byte(loss), 4), "passkey": pk}


def train_teacher(size: ByteLMSize, out: str, device: str, *, seed: int = 0, on_step=None) -> tuple:
    """Train (or resume, or reload) the softmax teacher in out/teacher; -> (model, record)."""
    folder = os.path.join(out, "teacher")
    model = teacher_lm(size)
    final = os.path.join(folder, "model")
    if os.path.exists(os.path.join(final, "config.json")):
        return LanguageModel.from_pretrained(final, device=device), {"reloaded": True}
    torch.manual_seed(seed)
    model = teacher_lm(size)
    data = ByteMixture(size, seed=seed)
    pool = data.pool(size.teacher_steps)
    val = validation(size, data.corpus)
    cfg = TrainConfig(steps=size.teacher_steps, batch_size=size.batch_size, lr=size.teacher_lr,
                      warmup_steps=max(1, size.teacher_steps // 20), eval_every=size.teacher_steps,
                      device=device, checkpoint_dir=os.path.join(folder, "checkpoints"), seed=seed,
                      checkpoint_every=100)
    res = train_lm(model, train=pool, test=val, config=cfg, on_step=on_step)
    model.save_pretrained(final)
    return model, {"seconds": round(res.seconds, 1), "steps": res.steps, "history": res.history}


def _tokens(size: ByteLMSize, steps: int, batch: int | None = None) -> int:
    return steps * (batch or size.batch_size) * size.seq_len


def run_student(teacher, pattern: str, size: ByteLMSize, out: str, device: str, *, stage: str = "both",
                seed: int = 0, lora: bool = True, progress=None) -> dict:
    """Stages 1 and/or 2 for one student pattern; the merged model goes to out/<pattern>/model."""
    folder = os.path.join(out, pattern.replace("*", "x").replace("+", "_"))
    data = ByteMixture(size, seed=seed + 1, batch_size=size.stage_batch)
    torch.manual_seed(seed)
    student, new = linearize_lm(teacher, pattern)
    student.to(device)
    teacher.eval()
    record = {"student": pattern, "new_params": sum(p.numel() for n, p in student.named_parameters() if n in new)}
    batch_at = _on_device(data.batch, device)
    swapped = [i for i in range(len(student.blocks)) if any(n.startswith(f"blocks.{i}.mixer.") for n in new)]
    pairs = [(teacher.blocks[i].mixer, student.blocks[i].mixer) for i in swapped]
    transfer = AttentionTransferLoss(pairs, lambda b: teacher(b[0]))
    probe = [batch_at(10_000 + i) for i in range(2)]
    if stage in ("1", "both"):
        freeze_except(student, new)
        record["stage1_mse_before"] = transfer.mse(probe)
        cfg = StageConfig(steps=size.stage1_steps, lr=size.stage1_lr, warmup_steps=max(1, size.stage1_steps // 10),
                          checkpoint_dir=os.path.join(folder, "stage1"))
        res = train_stage(student, transfer, batch_at, cfg, on_step=_tick(progress, f"{pattern} stage 1"))
        record["stage1_mse_after"] = transfer.mse(probe)
        record["stage1"] = {"steps": res.steps, "seconds": round(res.seconds, 1), "history": res.history,
                            "tokens": _tokens(size, res.steps, size.stage_batch)}
    if stage in ("2", "both"):
        if stage == "2":
            load_stage1(student, os.path.join(folder, "stage1"))
        if lora:
            apply_lora(student)
        else:
            for p in student.parameters():
                p.requires_grad_(True)
        cfg = StageConfig(steps=size.stage2_steps, lr=size.stage2_lr, warmup_steps=max(1, size.stage2_steps // 10),
                          checkpoint_dir=os.path.join(folder, "stage2"))
        res = train_stage(student, lm_finetune_loss(student, weights=DistillWeights(ce=1.0)), batch_at, cfg,
                          on_step=_tick(progress, f"{pattern} stage 2"))
        merge_lora(student)
        record["stage2"] = {"steps": res.steps, "seconds": round(res.seconds, 1), "history": res.history,
                            "tokens": _tokens(size, res.steps, size.stage_batch), "lora": lora}
    student.save_pretrained(os.path.join(folder, "model"))
    return student, record


def run_scratch(pattern: str, size: ByteLMSize, out: str, device: str, *, seed: int = 0, progress=None):
    """The same pattern from a random init, every parameter, on stage1+stage2 steps of the same batches."""
    folder = os.path.join(out, "scratch_" + pattern.replace("*", "x").replace("+", "_"))
    torch.manual_seed(seed)
    teacher_shape = teacher_lm(size)
    model, _ = linearize_lm(teacher_shape, pattern)      # same constructor arguments, weights re-drawn below
    model = LanguageModel(**model.init_config).to(device)
    steps = size.stage1_steps + size.stage2_steps
    data = ByteMixture(size, seed=seed + 1, batch_size=size.stage_batch)
    cfg = StageConfig(steps=steps, lr=size.teacher_lr, weight_decay=0.1, warmup_steps=max(1, steps // 20),
                      checkpoint_dir=os.path.join(folder, "train"))
    res = train_stage(model, lm_finetune_loss(model), _on_device(data.batch, device), cfg,
                      on_step=_tick(progress, f"{pattern} scratch"))
    return model, {"steps": res.steps, "seconds": round(res.seconds, 1), "history": res.history,
                   "tokens": _tokens(size, res.steps, size.stage_batch)}


def _on_device(fn, device):
    return lambda step: tuple(t.to(device) for t in fn(step))


def _tick(progress, name):
    return None if progress is None else progress.stage(name)


def run_byte_lm(students, size_name: str, out: str, *, device: str = "cpu", stage: str = "both", seed: int = 0,
                scratch: bool = True, lora: bool = True, progress=None, write=None) -> list[dict]:
    """The whole experiment: teacher, then per student stages + scratch; write(record) per result.
    lora=False: stage 2 fine-tunes every parameter instead of LoRA adapters."""
    size = BYTE_SIZES[size_name]
    torch.manual_seed(seed)
    np.random.seed(seed)
    teacher, t_rec = train_teacher(size, out, device, seed=seed, on_step=_tick(progress, "teacher"))
    corpus = StdlibBytes(max_bytes=size.corpus_bytes)
    val, keys = validation(size, corpus), passkey_sets(size)
    teacher_tokens = _tokens(size, size.teacher_steps)
    records = []

    def emit(rec):
        rec.update(experiment="byte_lm", size=size_name, teacher_tokens=teacher_tokens, config=asdict(size))
        records.append(rec)
        if write is not None:
            write(rec)

    emit({"model": "teacher", "pattern": "softmax", **evaluate_lm(teacher, size, val, keys, device), **t_rec})
    for pattern in students:
        student, rec = run_student(teacher, pattern, size, out, device, stage=stage, seed=seed, lora=lora,
                                   progress=progress)
        rec.update(model="linearized", pattern=pattern, **evaluate_lm(student, size, val, keys, device))
        for key in ("stage1", "stage2"):
            if key in rec:
                rec[key]["token_share"] = rec[key]["tokens"] / teacher_tokens
        if "stage1" in rec and "stage2" not in rec:
            rec["after"] = "stage1"
        emit(rec)
        if stage == "both":
            s1 = _stage1_only_eval(teacher, pattern, size, out, device, val, keys)
            emit({"model": "stage1_only", "pattern": pattern, **s1})
        if scratch:
            model, srec = run_scratch(pattern, size, out, device, seed=seed, progress=progress)
            srec["token_share"] = srec["tokens"] / teacher_tokens
            emit({"model": "scratch", "pattern": pattern, "scratch": srec,
                  **evaluate_lm(model, size, val, keys, device)})
    return records


def _stage1_only_eval(teacher, pattern, size, out, device, val, keys) -> dict:
    """The student as it was after stage 1 (its checkpoint), evaluated alone."""
    folder = os.path.join(out, pattern.replace("*", "x").replace("+", "_"), "stage1")
    student, _ = linearize_lm(teacher, pattern)
    load_stage1(student, folder)
    return evaluate_lm(student.to(device), size, val, keys, device)
