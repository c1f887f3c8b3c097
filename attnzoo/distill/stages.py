"""The two linearization stages of LoLCATs (Zhang et al. 2024, arXiv:2410.10254), as LAWCAT
(arXiv:2509.18467) uses them, over any model whose attention layers were swapped (swap.py):

  stage 1, attention transfer: each student mixer and the teacher attention it replaces see the
      same input (the teacher's, captured by a forward hook); only the student's new parameters
      train, on  L = mse_factor · mean_layers MSE(y_student, y_teacher)  (LoLCATs: mse_factor 1000).
  stage 2, fine-tuning: LoRA (lora.py; r=8, alpha=16 on q, k, v, o) or every parameter, on a task
      loss (next-token CE, optionally plus logit KD from the teacher).

`train_stage` is the one loop both use: AdamW on the parameters that require grad, warmup +
cosine, gradient clipping, and checkpoints (attnzoo.train.checkpoint: safetensors + JSON, atomic)
every `checkpoint_every` steps and at the end; called again with the same checkpoint_dir it resumes
from the last one (the data order depends only on the step, so the resumed run is the same run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from attnzoo.distill.losses import DistillWeights, attention_transfer, combined_loss
from attnzoo.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from attnzoo.train.optim import build_optimizer, warmup_cosine


@dataclass
class StageConfig:
    steps: int = 200
    lr: float = 1e-2
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    log_every: int = 10
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0          # 0: only at the end
    resume: bool = True

    def check(self):
        if self.steps < 1 or self.log_every < 1:
            raise ValueError(f"steps and log_every must be positive, got {self.steps}, {self.log_every}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass
class StageResult:
    steps: int
    seconds: float
    history: list = field(default_factory=list)    # [{"step", "loss", <part>: value}]
    resumed_from: int = 0


def train_stage(model: nn.Module, loss_fn, batch_at, config: StageConfig, *, on_step=None) -> StageResult:
    """Minimise loss_fn(batch) -> (loss, parts) over batch_at(step), training the parameters of
    `model` that require grad. on_step(step, loss) is called after each step (progress bars)."""
    config.check()
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"{type(model).__name__} has no parameter that requires grad")
    opt = build_optimizer(model, name="adamw", lr=config.lr, weight_decay=config.weight_decay)
    step, seconds, history, resumed = 0, 0.0, [], 0
    if config.checkpoint_dir and config.resume:
        path = latest_checkpoint(config.checkpoint_dir)
        if path is not None:
            meta = load_checkpoint(path, model=model, optimizer=opt)
            step = resumed = meta["step"]
            seconds = meta["extra"].get("seconds", 0.0)
            history = list(meta["extra"].get("history", []))
    t0 = time.perf_counter()

    def save():
        if config.checkpoint_dir:
            save_checkpoint(config.checkpoint_dir, model=model, optimizer=opt, step=step,
                            extra={"seconds": seconds + time.perf_counter() - t0, "history": history})

    model.train()
    while step < config.steps:
        scale = warmup_cosine(step, warmup=config.warmup_steps, total=config.steps, min_ratio=config.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = config.lr * scale
        loss, parts = loss_fn(batch_at(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], config.grad_clip)
        opt.step()
        step += 1
        value = float(loss.detach())
        if step % config.log_every == 0 or step == config.steps or step == 1:
            history.append({"step": step, "loss": value, **parts})
        if on_step is not None:
            on_step(step, value)
        if config.checkpoint_every and step % config.checkpoint_every == 0 and step < config.steps:
            save()
    if step > resumed or (config.checkpoint_dir and latest_checkpoint(config.checkpoint_dir) is None):
        save()
    return StageResult(steps=step, seconds=seconds + time.perf_counter() - t0, history=history, resumed_from=resumed)


class LayerCapture:
    """Forward hooks that keep each watched module's call (args, kwargs) and output.

        with LayerCapture(modules) as cap:
            teacher(x)
        cap.calls[i] -> (args, kwargs, output) of modules[i]'s last call (tensors detached)
    """

    def __init__(self, modules):
        self.modules = list(modules)
        self.calls: list = [None] * len(self.modules)
        self._handles = []

    def __enter__(self):
        def hook(i):
            def fn(module, args, kwargs, output):
                out = output[0] if isinstance(output, tuple) else output
                self.calls[i] = (_detach(args), _detach(kwargs), out.detach())
            return fn

        self._handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(self.modules)]
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []


def _detach(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, tuple):
        return tuple(_detach(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


class AttentionTransferLoss:
    """Stage 1's loss: run the teacher (no grad) with hooks on its attention layers, run each
    student layer on the same call, and return mse_factor · mean MSE of their outputs.

    pairs: [(teacher_layer, student_layer)]; run_teacher(batch) runs the teacher on a batch; mask_of(batch)
    optionally gives the bool [B, T] of scored (real) tokens."""

    def __init__(self, pairs, run_teacher, *, mse_factor: float = 1000.0, mask_of=None):
        if not pairs:
            raise ValueError("attention transfer needs at least one (teacher, student) layer pair")
        self.pairs = list(pairs)
        self.run_teacher = run_teacher
        self.mse_factor = mse_factor
        self.mask_of = mask_of

    def layer_outputs(self, batch):
        """(student outputs, teacher outputs), one per pair."""
        with torch.no_grad(), LayerCapture([t for t, _ in self.pairs]) as cap:
            self.run_teacher(batch)
        students, teachers = [], []
        for (_, student), call in zip(self.pairs, cap.calls):
            if call is None:
                raise ValueError("a teacher layer was not called by run_teacher")
            args, kwargs, out = call
            y = student(*args, **kwargs)
            students.append(y[0] if isinstance(y, tuple) else y)
            teachers.append(out)
        return students, teachers

    def __call__(self, batch):
        s, t = self.layer_outputs(batch)
        mse = attention_transfer(s, t, mask=None if self.mask_of is None else self.mask_of(batch))
        return self.mse_factor * mse, {"mse": float(mse.detach())}

    @torch.no_grad()
    def mse(self, batches) -> float:
        """Mean layer-wise MSE over a list of batches (no mse_factor): the stage-1 metric."""
        vals = []
        for b in batches:
            s, t = self.layer_outputs(b)
            vals.append(float(attention_transfer(s, t, mask=None if self.mask_of is None else self.mask_of(b))))
        return sum(vals) / len(vals)


def lm_finetune_loss(student, *, teacher=None, weights: DistillWeights | None = None):
    """Stage 2 (and from-scratch) loss for a LanguageModel on (ids, labels) batches: CE, plus
    logit KD / last-hidden MSE from `teacher` when their weights are positive."""
    weights = weights or DistillWeights()
    weights.check()
    if (weights.kd or weights.hidden) and teacher is None:
        raise ValueError("kd or hidden distillation needs a teacher")

    def fn(batch):
        x, y = batch
        logits = student(x)
        t_logits = None
        if weights.kd:
            with torch.no_grad():
                t_logits = teacher(x)
        return combined_loss(weights, student_logits=logits, teacher_logits=t_logits, labels=y)

    return fn


def freeze_except(model: nn.Module, names) -> int:
    """requires_grad only for the parameters named in `names`; returns how many elements train."""
    names = set(names)
    unknown = names - {n for n, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"no parameters named {sorted(unknown)[:5]} in {type(model).__name__}")
    count = 0
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)
        count += p.numel() if n in names else 0
    return count


def load_stage1(model: nn.Module, folder: str):
    """Load the last stage-1 checkpoint in `folder` into model (weights only), for `--stage 2`."""
    path = latest_checkpoint(folder)
    if path is None:
        raise ValueError(f"--stage 2 needs a finished stage 1 in {folder}")
    load_checkpoint(path, model=model)
