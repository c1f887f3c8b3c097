"""The training loop for token tasks: one small loop, same under torchrun (DDP) as alone.

    result = train_lm(model, train=(x, y), test=(xt, yt), config=TrainConfig(steps=500, lr=1e-3))

x, y are [N, T] int64 (labels -100 where nothing is scored). Each step draws a global batch from
a per-epoch permutation fixed by (seed, epoch), so the data order depends only on the step:
resuming from a checkpoint replays exactly what an uninterrupted run would have done. Under DDP
(torch.distributed initialised, e.g. by torchrun) every rank takes rank::world of the global
batch and the loss is scaled so that the averaged gradient equals the full-batch gradient.

loss = mean cross-entropy over scored tokens + lm.aux_loss() (mixers' auxiliary losses).
AdamW or LAMB, warmup + cosine, gradient clipping, bf16 autocast on CUDA, evaluation every
`eval_every` steps, early stop at `target_accuracy`, a wall-clock budget `max_seconds` (the first
step of a call, JIT compilation and warm-up, is not counted: TrainResult.warmup_seconds), atomic
checkpoints and resume.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from attnzoo.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from attnzoo.train.optim import build_optimizer, warmup_cosine

IGNORE_INDEX = -100


@dataclass
class TrainConfig:
    steps: int = 1000
    schedule_steps: int | None = None  # the warmup + cosine spans this many steps (None: steps); training
    # stops at `steps` <= it, so a run capped below its schedule follows the longer run's trajectory exactly
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    optimizer: str = "adamw"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 100
    eval_batch_size: int = 256
    target_accuracy: float | None = None
    max_seconds: float | None = None  # wall-clock cap of the steps after the first (the warm-up)
    seed: int = 0
    device: str = "cpu"
    amp: bool | None = None          # None: bf16 autocast on CUDA, off elsewhere
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0        # 0: checkpoint at evaluations and at the end
    resume: bool = True              # continue from checkpoint_dir/latest.json when present
    compile: bool | str = False      # torch.compile the training forward (True: inductor; a str: that backend);
    # evaluation stays eager. The first step then includes the compilation (not charged to max_seconds);
    # on a CPU it paid for few zoo models (benchmarks/results/compile/)

    def check(self):
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError(f"steps, batch_size and eval_every must be positive, got {self.steps}, "
                             f"{self.batch_size}, {self.eval_every}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.schedule_steps is not None and self.schedule_steps < self.steps:
            raise ValueError(f"schedule_steps must be None or >= steps ({self.steps}), got {self.schedule_steps}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise ValueError(f"target_accuracy must be in (0, 1], got {self.target_accuracy}")
        if not isinstance(self.compile, (bool, str)):
            raise ValueError(f"compile must be a bool or a torch.compile backend name, got {self.compile!r}")


@dataclass
class TrainResult:
    steps: int
    accuracy: float
    loss: float
    seconds: float
    stopped: str                      # "target" | "time" | "steps"
    history: list = field(default_factory=list)
    warmup_seconds: float = 0.0       # the call's first step (Triton JIT, allocator warm-up), not in max_seconds


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def batch_indices(step: int, *, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Indices of the global batch at `step`: consecutive slices of per-epoch permutations."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, off = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[off: off + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.long)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits up to float32 for the loss; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _autocast(device: torch.device, amp: bool | None):
    use = device.type == "cuda" if amp is None else amp
    if use:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


@torch.no_grad()
def evaluate(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 256,
             device="cpu", amp: bool | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over scored tokens; under DDP each rank does its share."""
    device = torch.device(device)
    rank, world = _world()
    was = model.training
    model.eval()
    tot = torch.zeros(3, dtype=torch.float64, device=device)     # loss sum, correct, count
    idx = torch.arange(rank, inputs.shape[0], world)
    for s in range(0, idx.numel(), batch_size):
        b = idx[s: s + batch_size]
        x, y = inputs[b].to(device), labels[b].to(device)
        with _autocast(device, amp):
            logits = model(x)
        logits = at_least_float32(logits)
        scored = y != IGNORE_INDEX
        tot[0] += F.cross_entropy(logits[scored], y[scored], reduction="sum").double()
        tot[1] += (logits[scored].argmax(-1) == y[scored]).sum()
        tot[2] += scored.sum()
    _all_sum(tot)
    model.train(was)
    n = max(1.0, float(tot[2]))
    return float(tot[0]) / n, float(tot[1]) / n


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) \
        else model


def train_lm(model: nn.Module, *, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
             config: TrainConfig, on_step=None, on_eval=None) -> TrainResult:
    """Train `model` (ids [B, T] -> logits [B, T, V]) and return the final evaluation.

    on_step(step, loss) and on_eval(step, loss, accuracy) are optional callbacks (progress bars;
    raising from one stops training, e.g. KeyboardInterrupt in tests)."""
    config.check()
    x_all, y_all = train
    if x_all.shape != y_all.shape or x_all.dim() != 2:
        raise ValueError(f"train inputs and labels must both be [N, T], got {tuple(x_all.shape)}, "
                         f"{tuple(y_all.shape)}")
    device = torch.device(config.device)
    rank, world = _world()
    if config.batch_size % world:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the world size {world}")
    torch.manual_seed(config.seed)
    base = model.to(device)
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            base, device_ids=[device.index] if device.type == "cuda" else None)
    opt = build_optimizer(base, name=config.optimizer, lr=config.lr, weight_decay=config.weight_decay)
    step, seconds_before, history = 0, 0.0, []
    if config.checkpoint_dir and config.resume:
        path = latest_checkpoint(config.checkpoint_dir)
        if path is not None:
            meta = load_checkpoint(path, model=base, optimizer=opt)   # all checked before applied
            step = meta["step"]
            seconds_before = meta["extra"].get("seconds", 0.0)
            history = meta["extra"].get("history", [])
    if device.type != "cpu":
        x_all, y_all = x_all.to(device), y_all.to(device)
    n = x_all.shape[0]
    t0 = time.perf_counter()
    warmup = None
    stopped = "steps"
    loss_val = float("nan")
    acc = history[-1]["accuracy"] if history else 0.0
    eval_loss = history[-1]["loss"] if history else float("nan")

    def elapsed():
        return seconds_before + time.perf_counter() - t0

    def checkpoint():
        if config.checkpoint_dir and rank == 0:
            save_checkpoint(config.checkpoint_dir, model=base, optimizer=opt, step=step,
                            extra={"seconds": elapsed(), "history": history, "config": asdict(config)})
        if world > 1:
            dist.barrier()

    model.train()
    forward = model
    if config.compile:
        forward = torch.compile(model, backend="inductor" if config.compile is True else config.compile)
    while step < config.steps:
        scale = warmup_cosine(step, warmup=config.warmup_steps, total=config.schedule_steps or config.steps,
                              min_ratio=config.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = config.lr * scale
        idx = batch_indices(step, n=n, batch_size=config.batch_size, seed=config.seed)[rank::world]
        idx = idx.to(x_all.device)
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        scored = y != IGNORE_INDEX
        count = _all_sum(scored.sum().to(torch.float32).reshape(1)).clamp_min(1.0)
        with _autocast(device, config.amp):
            logits = forward(x)
        ce_sum = F.cross_entropy(at_least_float32(logits).reshape(-1, logits.shape[-1]), y.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum")
        loss = ce_sum * world / count        # DDP averages over ranks: the mean is the full-batch mean
        aux = base.aux_loss() if hasattr(base, "aux_loss") else None
        if aux is not None:
            loss = loss + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(base.parameters(), config.grad_clip)
        opt.step()
        step += 1
        loss_val = float(_all_sum(ce_sum.detach().reshape(1)) / count)
        if warmup is None:  # the first step compiles kernels and warms up: not charged to max_seconds
            warmup = time.perf_counter() - t0
        if on_step is not None:
            on_step(step, loss_val)
        out_of_time = config.max_seconds is not None and elapsed() - warmup >= config.max_seconds
        if world > 1:
            flag = _all_sum(torch.tensor([float(out_of_time)], device=device))
            out_of_time = bool(flag.item() > 0)
        last = step >= config.steps or out_of_time
        if step % config.eval_every == 0 or last:
            eval_loss, acc = evaluate(model, *test, batch_size=config.eval_batch_size, device=device,
                                      amp=config.amp)
            history.append({"step": step, "train_loss": loss_val, "loss": eval_loss, "accuracy": acc,
                            "seconds": round(elapsed(), 3)})
            if on_eval is not None:
                on_eval(step, eval_loss, acc)
            if config.target_accuracy is not None and acc >= config.target_accuracy:
                stopped = "target"
        if config.checkpoint_dir and (
                (config.checkpoint_every and step % config.checkpoint_every == 0)
                or (not config.checkpoint_every and (step % config.eval_every == 0 or last))
                or stopped == "target"):
            checkpoint()
        if stopped == "target":
            break
        if out_of_time:
            stopped = "time" if step < config.steps else "steps"
            break
    return TrainResult(steps=step, accuracy=acc, loss=eval_loss, seconds=elapsed(), stopped=stopped,
                       history=history, warmup_seconds=warmup or 0.0)
