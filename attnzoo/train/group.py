"""Many small models trained as one: a group of same-shaped models (the learning rates of a sweep,
seeds) stacked along a leading member dim and run by `torch.func.vmap` over `functional_call`.

    results = train_group(models, lrs=[1e-4, 4.6e-4, 2.2e-3, 1e-2], train=(x, y), test=(xt, yt),
                          config=TrainConfig(steps=2000, batch_size=512))

A tiny model leaves a GPU idle: one step of a 2-layer d=64 model is ~300 small kernel launches. In a
group each launch does the work of G models (the chunked ops fold the member dim into their batch
dim: ops/common/chunk_layout.SegmentedScan.vmap), so a step costs about what one model's did.

Every member sees exactly what `train_lm` would give it alone with the same config (same data order,
warmup + cosine schedule, AdamW with the same parameter groups, gradient clipping by the member's own
global norm, mean cross-entropy over scored tokens + the mixers' auxiliary losses, evaluation, early
stop at target_accuracy): a member that reaches the target leaves the group (its parameters are frozen
from that step, and it no longer costs compute); tests/train/test_group.py checks member == alone.

Limits: every member shares the config but its lr; models must have equal parameter shapes; the
logits are formed only at scored positions (the same loss; MQAR scores a few positions per sequence,
so the vocabulary head costs almost nothing); no DDP, no checkpoints (a group is a few minutes).
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from attnzoo.train.group_optim import FlatParams, GroupAdamW, clip_member_grads  # noqa: F401 (re-export)
from attnzoo.train.group_step import GroupStep
from attnzoo.train.optim import warmup_cosine
from attnzoo.train.trainer import IGNORE_INDEX, TrainConfig, TrainResult, _autocast, at_least_float32, batch_indices


class GroupModel:
    """G models of one architecture as stacked tensors: params[name] [G, ...] (views of one flat buffer,
    self.flat: group_optim.FlatParams), run under vmap."""

    def __init__(self, models: list[nn.Module], device):
        if not models:
            raise ValueError("a group needs at least one model")
        shapes = [[(n, tuple(p.shape)) for n, p in m.named_parameters()] for m in models]
        if any(s != shapes[0] for s in shapes[1:]):
            raise ValueError("every model of a group must have the same parameter names and shapes")
        models = [m.to(device) for m in models]
        params, self.buffers = stack_module_state(models)
        self.flat = FlatParams(params)
        self.template = copy.deepcopy(models[0]).to("meta")
        self.size = len(models)

    @property
    def params(self) -> dict:
        return self.flat.params

    def scored_logits(self, ids, rows, cols, *, training: bool):
        """logits [G, n, vocab] at the scored positions (rows, cols) of ids [B, T], and aux [G]."""
        self.template.train(training)

        def one(params, buffers):
            x = functional_call(self.template, (params, buffers), (ids,), {"head": False}, strict=False)
            aux = self.template.aux_loss() if hasattr(self.template, "aux_loss") else None
            logits = x[rows, cols] @ params["embed.weight"].t().to(x.dtype)
            return logits, (torch.zeros((), device=ids.device) if aux is None else aux.float())

        out = vmap(one, randomness="different")(self.params, self.buffers)
        for m in self.template.modules():          # no BatchedTensor may outlive vmap on the template
            if getattr(m, "aux_loss", None) is not None and isinstance(m.aux_loss, torch.Tensor):
                m.aux_loss = None
        return out

    def keep(self, members: torch.Tensor):
        """Keep only `members` (indices into the current group)."""
        self.flat.keep(members)
        self.buffers = {k: v[members] for k, v in self.buffers.items()}
        self.size = int(members.numel())

    def member_state_dict(self, i: int) -> dict:
        return {**{k: v[i].detach().clone() for k, v in self.params.items()},
                **{k: v[i].clone() for k, v in self.buffers.items()}}


@torch.no_grad()
def evaluate_group(group: GroupModel, inputs, labels, *, batch_size: int, device, amp) -> tuple[list, list]:
    """Per member (mean cross-entropy, accuracy) over scored tokens, as trainer.evaluate."""
    tot = torch.zeros(group.size, 3, dtype=torch.float64, device=device)
    for s in range(0, inputs.shape[0], batch_size):
        x, y = inputs[s:s + batch_size].to(device), labels[s:s + batch_size].to(device)
        rows, cols = (y != IGNORE_INDEX).nonzero(as_tuple=True)
        target = y[rows, cols]
        with _autocast(device, amp):
            logits, _ = group.scored_logits(x, rows, cols, training=False)
        logits = at_least_float32(logits)
        ce = F.cross_entropy(logits.flatten(0, 1), target.repeat(group.size), reduction="none")
        tot[:, 0] += ce.view(group.size, -1).sum(1).double()
        tot[:, 1] += (logits.argmax(-1) == target).sum(1)
        tot[:, 2] += target.numel()
    n = tot[:, 2].clamp_min(1.0)
    return (tot[:, 0] / n).tolist(), (tot[:, 1] / n).tolist()


def train_group(models: list[nn.Module], *, lrs, train, test, config: TrainConfig, on_step=None,
                on_eval=None, graph: bool = False, report_every: float = 0.5,
                compile: bool | str = False) -> list[TrainResult]:
    """Train every model of `models` (same architecture) with its own lr; the rest of `config` is shared.

    Returns one TrainResult per model, in order; each model's weights are updated in place at the end.
    on_step(step, losses [per active member]) (at most every report_every seconds: reading the losses
    waits for the device) and on_eval(step, member, loss, accuracy) are callbacks. graph=True replays
    each step from a CUDA graph where it can (group_step.py; train_group.graph_note says why not);
    compile=True traces each step's forward and backward with torch.compile (inductor; a string: that backend)."""
    config.check()
    lrs = [float(v) for v in lrs]
    if len(lrs) != len(models):
        raise ValueError(f"one lr per model: {len(models)} models, {len(lrs)} lrs")
    if any(not (lr > 0 and math.isfinite(lr)) for lr in lrs):
        raise ValueError(f"every lr must be a finite number > 0, got {lrs}")
    x_all, y_all = train
    if x_all.shape != y_all.shape or x_all.dim() != 2:
        raise ValueError(f"train inputs and labels must both be [N, T], got {tuple(x_all.shape)}, "
                         f"{tuple(y_all.shape)}")
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    group = GroupModel(models, device)
    opt = GroupAdamW(group.flat, weight_decay=config.weight_decay)
    active = list(range(len(models)))                     # model index of each group member
    peak = torch.tensor(lrs, device=device, dtype=torch.float64)
    results: list[TrainResult | None] = [None] * len(models)
    histories = [[] for _ in models]
    final_states: dict[int, dict] = {}
    if device.type != "cpu":
        x_all, y_all = x_all.to(device), y_all.to(device)
    stepper = GroupStep(group, opt, x_all, y_all, batch_size=config.batch_size, grad_clip=config.grad_clip,
                        amp=config.amp, device=device, graph=graph, compile=compile)
    n, step, t0, warmup = x_all.shape[0], 0, time.perf_counter(), None
    losses = [float("nan")] * len(models)
    mean = None

    def finish(member: int, stopped: str):
        i = active[member]
        h = histories[i]
        results[i] = TrainResult(steps=step, accuracy=h[-1]["accuracy"] if h else 0.0,
                                 loss=h[-1]["loss"] if h else float("nan"), seconds=time.perf_counter() - t0,
                                 stopped=stopped, history=h, warmup_seconds=warmup or 0.0)
        final_states[i] = group.member_state_dict(member)

    def read_losses():
        for j, v in enumerate(mean.tolist()):
            losses[active[j]] = v

    last_report = 0.0
    while active:
        scale = warmup_cosine(step, warmup=config.warmup_steps, total=config.schedule_steps or config.steps,
                              min_ratio=config.min_lr_ratio)
        idx = batch_indices(step, n=n, batch_size=config.batch_size, seed=config.seed).to(device, non_blocking=True)
        mean = stepper.step(idx, peak[active] * scale)
        step += 1
        if warmup is None:
            warmup = time.perf_counter() - t0
        if on_step is not None and time.perf_counter() - last_report >= report_every:
            last_report = time.perf_counter()
            read_losses()
            on_step(step, [losses[i] for i in active])
        out_of_time = config.max_seconds is not None and time.perf_counter() - t0 - warmup >= config.max_seconds
        last = step >= config.steps or out_of_time
        if step % config.eval_every == 0 or last:
            read_losses()
            ev_loss, ev_acc = evaluate_group(group, *test, batch_size=config.eval_batch_size, device=device,
                                             amp=config.amp)
            done = []
            for j, i in enumerate(active):
                histories[i].append({"step": step, "train_loss": losses[i], "loss": ev_loss[j],
                                     "accuracy": ev_acc[j], "seconds": round(time.perf_counter() - t0, 3)})
                if on_eval is not None:
                    on_eval(step, i, ev_loss[j], ev_acc[j])
                if config.target_accuracy is not None and ev_acc[j] >= config.target_accuracy:
                    finish(j, "target")
                    done.append(j)
                elif last:
                    finish(j, "time" if out_of_time and step < config.steps else "steps")
                    done.append(j)
            if done:
                keep = torch.tensor([j for j in range(len(active)) if j not in done], dtype=torch.long,
                                    device=device)
                active = [active[j] for j in keep.tolist()]
                if active:
                    group.keep(keep)
                    opt.keep(keep)
                    stepper.reset()
    for i, m in enumerate(models):
        m.load_state_dict(final_states[i], strict=False)
    train_group.graph_note = stepper.graph_note
    return results


def group_error(models: list[nn.Module], *, sample_ids: torch.Tensor, device="cpu") -> str | None:
    """Why these models cannot be trained as one group, or None: a training forward + backward, or an
    evaluation forward, under vmap on sample_ids [B, T] fails (an .item(), a data-dependent shape...)."""
    try:
        group = GroupModel([copy.deepcopy(m) for m in models[:2]], device)
        ids = sample_ids.to(device)
        rows = torch.zeros(1, dtype=torch.long, device=device)
        logits, aux = group.scored_logits(ids, rows, rows, training=True)
        (logits.float().sum() + aux.sum()).backward()
        with torch.no_grad():                          # evaluation may take another path (moh does)
            group.scored_logits(ids, rows, rows, training=False)
    except (RuntimeError, ValueError, NotImplementedError, TypeError) as e:
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return None


def train_many(models: list[nn.Module], *, lrs, train, test, config: TrainConfig, on_step=None,
               on_eval=None, graph: bool = False, compile: bool | str = False) -> tuple[list[TrainResult], str | None]:
    """train_group where the models can be grouped, else each alone with train_lm (in order).

    Returns (results, note): note None when grouped, else why the models ran one at a time.
    train_many.graph_note: why no CUDA graph was used (None when one was, or graph=False)."""
    train_many.graph_note = None
    note = "one model" if len(models) < 2 else group_error(models, sample_ids=train[0][:config.batch_size],
                                                             device=config.device)
    if note is None:
        try:
            results = train_group(models, lrs=lrs, train=train, test=test, config=config, on_step=on_step,
                                  on_eval=on_eval, graph=graph, compile=compile)
            train_many.graph_note = train_group.graph_note if graph else None
            return results, None
        except RuntimeError as e:          # a batch the probe did not meet (the models are untouched)
            if "vmap" not in str(e) and "batch" not in str(e).lower():
                raise
            note = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    from dataclasses import replace

    from attnzoo.train.trainer import train_lm

    results = []
    for i, (m, lr) in enumerate(zip(models, lrs)):
        results.append(train_lm(m, train=train, test=test, config=replace(config, lr=float(lr)),
                                on_step=None if on_step is None else (lambda s, lo: on_step(s, [lo])),
                                on_eval=None if on_eval is None else (lambda s, lo, a, i=i: on_eval(s, i, lo, a))))
    return results, note
