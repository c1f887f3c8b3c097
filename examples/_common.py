"""What every example shares: the command line, the training loop and the result line.

    args = example_args(__doc__, argv, default_steps=300, small_steps=5)
    losses = fit(model, lambda: make_batch(batch, size, g), lambda x, y: (model(x) - y).square().mean(),
                 steps=args.steps, lr=1e-2)
    report("my_example", steps=args.steps, t0=t0, result=f"validation MSE {mse:.4f}", learned=mse < 0.1)

Examples import it as `from _common import ...`: `python examples/<name>.py` puts examples/ on
sys.path, and tests/examples/conftest.py does the same for the smoke tests.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}


def example_args(doc: str, argv: list[str] | None, *, default_steps: int, small_steps: int,
                 extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Parse --small, --steps, --seed, --threads (+ what `extra(parser)` adds); set threads and the seed.

    `args.steps` comes back resolved: the --steps given, else `small_steps` with --small, else
    `default_steps` (a --steps of 0 also means the default). torch's CPU threads are set to
    --threads and the global torch seed to --seed.
    """
    if default_steps < 1 or small_steps < 1:
        raise ValueError(f"expected default_steps >= 1 and small_steps >= 1, got {default_steps}, {small_steps}")
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny run for the smoke test")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (small models: 1 is fastest)")
    if extra is not None:
        extra(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.steps = args.steps or (small_steps if args.small else default_steps)
    torch.manual_seed(args.seed)
    return args


@contextlib.contextmanager
def cpu_threads(n: int) -> Iterator[None]:
    """Run the body with `n` torch CPU threads, then put the previous number back."""
    if n < 1:
        raise ValueError(f"expected threads >= 1, got {n}")
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(model_or_params: nn.Module | Iterable[torch.Tensor], batch_fn: Callable[[], tuple | torch.Tensor],
        loss_fn: Callable[..., torch.Tensor], *, steps: int, lr: float, optimizer: str = "adam",
        weight_decay: float | None = None, clip_norm: float | None = None,
        lr_schedule: Callable[[torch.optim.Optimizer], object] | None = None) -> list[float]:
    """`steps` optimiser steps of loss_fn(*batch_fn()); returns the loss of every step.

    Per step: draw a batch (a tuple is unpacked into loss_fn's arguments, anything else is passed
    as one argument), compute the loss, zero the gradients, backward, clip the gradient norm to
    `clip_norm` if given, step the optimiser, then the scheduler `lr_schedule(optimizer)` if given.
    `optimizer` is "adam" or "adamw"; `weight_decay` None keeps the optimiser's own default
    (Adam 0, AdamW 0.01).
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    if steps < 0:
        raise ValueError(f"expected steps >= 0, got {steps}")
    params = list(model_or_params.parameters() if isinstance(model_or_params, nn.Module) else model_or_params)
    kwargs = {} if weight_decay is None else {"weight_decay": weight_decay}
    opt = OPTIMIZERS[optimizer](params, lr=lr, **kwargs)
    sched = lr_schedule(opt) if lr_schedule is not None else None
    losses = []
    for _ in range(steps):
        batch = batch_fn()
        loss = loss_fn(*batch) if isinstance(batch, tuple) else loss_fn(batch)
        opt.zero_grad()
        loss.backward()
        if clip_norm is not None:
            nn.utils.clip_grad_norm_(params, clip_norm)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(loss.item())
    return losses


def validation_mse(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error of model(x) against y, without gradients."""
    with torch.no_grad():
        return (model(x) - y).square().mean().item()


def report(name: str, *, steps: int, t0: float, result: str, learned: bool, each: bool = False) -> None:
    """Print the result line `<name>: <steps> steps [each] in <s>s; <result> -> learned=<learned>`."""
    each_txt = " each" if each else ""
    print(f"{name}: {steps} steps{each_txt} in {time.time() - t0:.1f}s; {result} -> learned={learned}")
