"""Shared pieces of the hybrid-ratio / ssa-align studies: small LMs, stdlib-bytes and MQAR data, one fit.

    model = small_lm("gla*3,softmax", vocab=256, d_model=64, n_layers=4, n_heads=2)
    train, val = byte_data(seq_len=64, n_train=2048, n_val=128, seed=0)
    res = fit(model, train, val, steps=100, batch_size=16, lr=3e-3, device="cpu", max_seconds=10)
    bpb = bits_per_byte_of(model, val, device="cpu")

Everything goes through the library: attnzoo.models.LanguageModel, attnzoo.tasks (bytes, mqar) and
attnzoo.train.train_lm (AdamW, warmup + cosine, clipping, bf16 autocast on CUDA, max_seconds).
"""

from __future__ import annotations

import functools
import math

import torch

from attnzoo.models import LanguageModel
from attnzoo.tasks.bytes import StdlibBytes
from attnzoo.tasks.mqar import generate_mqar
from attnzoo.train import TrainConfig, evaluate, train_lm


def hybrid_pattern(linear: str, ratio: int | None) -> str:
    """Layer pattern for linear:full = ratio:1 (one softmax layer closing each unit of ratio+1 layers,
    the paper's interleaving); ratio=None is the pure linear stack, ratio=0 all softmax."""
    if ratio is None:
        return linear
    if ratio == 0:
        return "softmax"
    return f"{linear}*{ratio},softmax"


def small_lm(pattern: str, *, vocab: int, d_model: int, n_layers: int, n_heads: int, mlp_ratio: float = 2.0,
             mixer_kwargs: dict | None = None, init: str = "default") -> LanguageModel:
    """A LanguageModel whose every mixer gets n_heads (softmax: as many kv heads) plus mixer_kwargs[name];
    init as LanguageModel's ("default" or "gpt2")."""
    from attnzoo.models.lm import pattern_unit

    kw = {}
    for name in set(pattern_unit(pattern)):
        kw[name] = {"n_heads": n_heads, **({"n_kv_heads": n_heads} if name == "softmax" else {}),
                    **(mixer_kwargs or {}).get(name, {})}
    return LanguageModel(vocab, d_model, n_layers, pattern, mixer_kwargs=kw, mlp_ratio=mlp_ratio, init=init)


@functools.lru_cache(maxsize=2)
def stdlib_corpus(max_bytes: int = 4_000_000) -> StdlibBytes:
    return StdlibBytes(max_bytes=max_bytes)


def byte_data(*, seq_len: int, n_train: int, n_val: int, seed: int = 0):
    """(train, validation) windows of the stdlib corpus, each (inputs, labels) [N, T] int64."""
    c = stdlib_corpus()
    return (c.windows("train", seq_len=seq_len, num=n_train, seed=seed),
            c.windows("validation", seq_len=seq_len, num=n_val, seed=seed + 1))


def unigram_bits(tokens: torch.Tensor, vocab: int = 256) -> float:
    """Order-0 entropy in bits per token of `tokens` (what a model knowing only byte frequencies scores)."""
    p = torch.bincount(tokens.reshape(-1), minlength=vocab).double()
    p = p[p > 0] / p.sum()
    return float(-(p * p.log2()).sum())


def mqar_mix(*, seq_len: int, pairs: tuple[int, ...], vocab: int, n_train: int, n_test: int, seed: int = 0):
    """MQAR training data mixing the difficulties `pairs` (equal shares, shuffled), and one test set
    per difficulty: (train, {pairs: test})."""
    xs, ys, tests = [], [], {}
    for i, d in enumerate(pairs):
        x, y = generate_mqar(n_train // len(pairs), seq_len=seq_len, num_pairs=d, vocab_size=vocab,
                             seed=seed * 1000 + 2 * i)
        xs.append(x)
        ys.append(y)
        tests[d] = generate_mqar(n_test, seq_len=seq_len, num_pairs=d, vocab_size=vocab, seed=seed * 1000 + 2 * i + 1)
    perm = torch.randperm(sum(len(x) for x in xs), generator=torch.Generator().manual_seed(seed))
    return (torch.cat(xs)[perm], torch.cat(ys)[perm]), tests


def fit(model, train, test, *, steps: int, batch_size: int, lr: float, device: str, seed: int = 0,
        max_seconds: float | None = None, warmup_steps: int | None = None):
    """train_lm with the studies' defaults (one evaluation at the end); returns its TrainResult."""
    cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, weight_decay=0.1,
                      warmup_steps=max(1, steps // 10) if warmup_steps is None else warmup_steps,
                      eval_every=steps, eval_batch_size=64, seed=seed, device=device, max_seconds=max_seconds)
    return train_lm(model, train=train, test=test, config=cfg)


def train_step_seconds(model, data, *, batch_size: int, device: str, steps: int = 3) -> float:
    """Median wall seconds of one training step (forward, loss, backward, AdamW under the trainer's
    autocast) of `model` on the first batch of `data`, after one untimed warm-up step (Triton JIT).
    The model's weights change: probe a throwaway copy."""
    import time

    import torch.nn.functional as F

    from attnzoo.train.trainer import _autocast

    dev = torch.device(device)
    model = model.to(dev)
    x, y = (t[:batch_size].to(dev) for t in data)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(steps + 1):
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with _autocast(dev, None):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def equal_steps(step_seconds: list[float], *, budget_seconds: float, most: int, least: int = 1) -> int:
    """The one step count every run gets so that all of them together fit budget_seconds."""
    if not step_seconds or budget_seconds <= 0:
        raise ValueError(f"need step times and a positive budget, got {step_seconds}, {budget_seconds}")
    return max(least, min(most, int(budget_seconds / sum(step_seconds))))


def run_tasks(fn, tasks: list, *, workers: int = 1, on_done=None) -> list:
    """[fn(t) for t in tasks], with workers > 1 in that many fresh spawned processes at once (the zoo's
    pool: attnzoo.bench.zoo.pool; one process per task). Tiny models leave a GPU mostly idle, so several
    runs sharing it finish sooner (bench/zoo/schedule.py measured in-run steps of max(2.5 x probe, 37 ms)
    with 8 at once on an H200). fn must be a module-level function; results come back in task order.
    on_done(i, result), if given, is called in this process as each task finishes (in finishing order),
    so that a study can record every finished run before the whole set ends (a run cut by a time cap
    keeps what finished)."""
    if workers <= 1 or len(tasks) <= 1:
        out = []
        for i, t in enumerate(tasks):
            out.append(fn(t))
            if on_done is not None:
                on_done(i, out[-1])
        return out
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, wait

    from attnzoo.bench.zoo.pool import fresh_process_pool, ignore_sigint

    workers = min(workers, len(tasks))
    pool = fresh_process_pool(workers, mp.get_context("spawn"), initializer=ignore_sigint)
    out, todo, running = [None] * len(tasks), list(enumerate(tasks)), {}
    try:
        while todo or running:
            while todo and len(running) < workers:     # at most `workers` in flight (ProcessPerTask runs
                i, t = todo.pop(0)                     # whatever it is given at once)
                running[pool.submit(fn, t)] = i
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                i = running.pop(f)
                out[i] = f.result()
                if on_done is not None:
                    on_done(i, out[i])
        return out
    finally:
        pool.shutdown(wait=True)


def eval_loss_acc(model, data, *, device: str) -> tuple[float, float]:
    return evaluate(model, *data, batch_size=64, device=device)


def bits_per_byte_of(model, data, *, device: str) -> float:
    """Validation bits per byte (mean cross-entropy in nats / ln 2)."""
    return eval_loss_acc(model, data, device=device)[0] / math.log(2)
