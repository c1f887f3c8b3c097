"""`attnzoo bench zoo-throughput`: model-steps per second of the zoo's training, one run per process
(the zoo's path until issue #23) against many models trained as one (attnzoo.train.group), eager and
replayed from CUDA graphs, side by side in one process tree on one device.

Every path trains the same models on the same MQAR batches (the `paper` preset's vocabulary, batch
sizes and (T, pairs)); a model-step is one optimizer step of one model. Timed after warm-up steps
(Triton JIT, CUDA graph capture), wall clock between device synchronisations:

- process: `workers` processes at once, each training one model with train_lm (it reads the loss
  every step, as the zoo's runs did); steps/s = workers * steps / the slowest worker's time.
- group / group_graph: one process, a group of `group_size` models (the paper's learning rates,
  repeated) stepped by train.group_step.GroupStep, eager or from a CUDA graph.
- group_procs: `group_workers` processes at once (default: the preset's workers, as its grid runs them),
  each a group of `group_size` models from a CUDA graph (eager off CUDA); steps/s = the sum over them.
- group_graph_compiled: group_graph with the step's forward and backward under torch.compile (inductor),
  which fuses the step's small elementwise kernels; the compile happens in the warm-up steps.

Results: <out>/throughput.jsonl (one line per case and path, with the machine line) and
<out>/throughput.md (the table with the ratios to the process path).
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import torch

from attnzoo.bench.timing import sync
from attnzoo.bench.zoo.presets import get_preset

DEFAULT_MIXERS = ("softmax", "gla", "gated_deltanet", "deltanet", "mamba", "based", "base_conv", "h3")
PAIRS = {64: 4, 128: 8, 256: 16, 512: 64}
PATHS = ("process", "group", "group_graph", "group_procs", "group_graph_compiled")


def paper_batch(seq_len: int) -> int:
    """Zoology's Figure 2 batch sizes: 512 for T <= 128, 256 for T = 256, 128 for T = 512."""
    return 512 if seq_len <= 128 else (256 if seq_len <= 256 else 128)


def case_spec(mixer: str, d_model: int, seq_len: int, vocab: int, batch: int | None = None) -> dict:
    return {"task": "mqar", "mixer": mixer, "d_model": d_model, "lr": 1e-3, "seq_len": seq_len,
            "num_pairs": PAIRS.get(seq_len, max(1, seq_len // 16)), "vocab_size": vocab,
            "batch": batch or paper_batch(seq_len)}


def _data(spec: dict, n: int):
    from attnzoo.tasks import token_task

    return token_task("mqar", seq_len=spec["seq_len"], num_train=n, num_test=64, seed=0,
                      num_pairs=spec["num_pairs"], vocab_size=spec["vocab_size"])


def _models(spec: dict, preset, n: int):
    """n models as the zoo builds them (the preset's seed: the members of a learning-rate group)."""
    from attnzoo.bench.zoo import models

    return [models.build_model(spec, preset) for _ in range(n)]


def group_stepper(spec, preset, *, device, group_size: int, graph: bool, compile: bool | str = False, n_idx: int):
    """(GroupStep, lr [G], batch indices [n_idx] of [B]): a group of group_size models of spec as the zoo
    builds them, on its MQAR data (the time_group bench's, and benchmarks/gpu_group_profile.py's)."""
    from attnzoo.train.group import GroupAdamW, GroupModel
    from attnzoo.train.group_step import GroupStep
    from attnzoo.train.trainer import batch_indices

    batch = spec["batch"]
    data = _data(spec, max(4 * batch, 2048))
    x, y = (t.to(device) for t in data.train)
    group = GroupModel(_models(spec, preset, group_size), device)
    opt = GroupAdamW(group.flat, weight_decay=0.1)
    stepper = GroupStep(group, opt, x, y, batch_size=batch, grad_clip=1.0, amp=None, device=device, graph=graph,
                        compile=compile)
    lr = torch.full((group_size,), 1e-3, dtype=torch.float64, device=device)
    idx = [batch_indices(i, n=x.shape[0], batch_size=batch, seed=0).to(device) for i in range(n_idx)]
    return stepper, lr, idx


def time_steps(stepper, lr, idx, *, warmup: int, device, before_timing=None) -> float:
    """Seconds per step of stepper over idx[warmup:], after `warmup` steps (CUDA graph capture included);
    before_timing() runs between the two."""
    for i in range(warmup):
        stepper.step(idx[i], lr)
    sync(device)
    if before_timing is not None:
        before_timing()
    t0 = time.perf_counter()
    for i in range(warmup, len(idx)):
        stepper.step(idx[i], lr)
    sync(device)
    return (time.perf_counter() - t0) / (len(idx) - warmup)


def time_group(spec, preset, *, device, group_size: int, graph: bool, steps: int, warmup: int,
               before_timing=None, compile: bool | str = False) -> float:
    """Seconds per group step (group_size models), after `warmup` steps (capture included);
    before_timing() runs between the two (the group_procs path's barrier)."""
    stepper, lr, idx = group_stepper(spec, preset, device=device, group_size=group_size, graph=graph,
                                     compile=compile, n_idx=warmup + steps)
    sec = time_steps(stepper, lr, idx, warmup=warmup, device=device, before_timing=before_timing)
    if graph and stepper.graph is None:
        raise RuntimeError(stepper.graph_note or "no CUDA graph was captured")
    return sec


def _group_process_worker(specs, preset_name, device, steps, warmup, seed, barrier, queue, group_size):
    """One of the group_procs path's processes: a group of group_size models per case, replayed from a CUDA
    graph (eager off CUDA), its timed steps started together with the other processes'."""
    preset = get_preset(preset_name)
    torch.set_num_threads(1)
    graph = torch.device(device).type == "cuda"
    for case, spec in enumerate(specs):
        waited = []

        def wait(waited=waited):
            waited.append(True)
            barrier.wait(timeout=600)

        try:
            sec = time_group(spec, preset, device=device, group_size=group_size, graph=graph, steps=steps,
                             warmup=warmup, before_timing=wait)
            queue.put((case, sec * steps, None))   # seconds of the `steps` timed group steps
        except Exception as e:  # noqa: BLE001 -- reported for this case; the barrier still needs this worker
            if not waited:
                with contextlib.suppress(Exception):
                    barrier.wait(timeout=600)
            queue.put((case, None, f"{type(e).__name__}: {e}"[:300]))
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


def _process_worker(specs, preset_name, device, steps, warmup, seed, barrier, queue):
    """One of the `workers` processes: trains one model per case in turn, each case started together."""
    from attnzoo.train import TrainConfig, train_lm

    preset = get_preset(preset_name)
    torch.set_num_threads(1)
    for case, spec in enumerate(specs):
        batch = spec["batch"]
        try:
            data = _data(spec, max(4 * batch, 2048))
            model = _models(spec, preset, 1)[0]
        except Exception as e:  # noqa: BLE001 -- reported for this case; the barrier still needs this worker
            data, err = None, f"{type(e).__name__}: {e}"
        marks = {}

        def on_step(step, loss, marks=marks):
            if step == warmup:
                sync(device)
                barrier.wait(timeout=600)        # a peer that died breaks the barrier: this case errs
                marks["t0"] = time.perf_counter()
            elif step == warmup + steps:
                sync(device)
                marks["t1"] = time.perf_counter()

        if data is None:
            barrier.wait(timeout=600)
            queue.put((case, None, err[:300]))
            continue
        cfg = TrainConfig(steps=warmup + steps, batch_size=batch, lr=1e-3, eval_every=10**9, device=device,
                          warmup_steps=1, seed=seed)
        try:
            train_lm(model, train=data.train, test=(data.test[0][:8], data.test[1][:8]), config=cfg,
                     on_step=on_step)
            queue.put((case, marks["t1"] - marks["t0"], None))
        except Exception as e:  # noqa: BLE001
            if "t0" not in marks:
                with contextlib.suppress(Exception):
                    barrier.wait(timeout=600)
            queue.put((case, None, f"{type(e).__name__}: {e}"[:300]))
        del model, data
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


def time_processes(specs: list[dict], preset_name, *, device, workers: int, steps: int, warmup: int,
                   group_size: int | None = None) -> list:
    """Seconds per model-step (or an error string) per case, with `workers` processes sharing the device:
    one model each (the zoo's path before issue #23), or with group_size a group of that many models each
    (group_procs: the paper preset's grid runs its groups so, `workers` at a time). The processes start once
    and run every case in turn; each case's timed steps start together (a barrier)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    if group_size is None:
        target, extra = _process_worker, ()
    else:
        target, extra = _group_process_worker, (group_size,)
    procs = [ctx.Process(target=target, args=(specs, preset_name, device, steps, warmup, w, barrier, queue, *extra))
             for w in range(workers)]
    for p in procs:
        p.start()
    import queue as queue_mod

    got: dict = {}
    for _ in range(workers * len(specs)):
        while True:
            try:
                case, sec, err = queue.get(timeout=5)
                break
            except queue_mod.Empty:
                if not any(p.is_alive() for p in procs):     # a worker died: its peers' barrier broke too
                    case = None
                    break
        if case is None:
            break
        got.setdefault(case, []).append(err if sec is None else sec)
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
    out = []
    for case in range(len(specs)):
        vals = got.get(case, ["no result"])
        errs = [v for v in vals if isinstance(v, str)]
        out.append(errs[0] if errs else max(vals) / (workers * steps * (group_size or 1)))
    return out


def run_throughput(*, mixers=DEFAULT_MIXERS, d_models=(64, 256), seq_lens=(64, 256), out: str,
                   device: str = "cuda", steps: int = 20, warmup: int = 5, group_size: int = 4,
                   workers: int = 8, paths=("process", "group", "group_graph"), preset: str = "paper",
                   batch: int | None = None, group_workers: int | None = None) -> list[dict]:
    """Time every (mixer, d_model, seq_len) on every path; append each result to throughput.jsonl.
    batch None: Zoology's batch for each T (paper_batch). group_workers (group_procs path): processes each
    running a group at once, default the preset's workers (what its grid runs)."""
    from attnzoo.bench.zoo.models import machine_line

    unknown = set(paths) - set(PATHS)
    if unknown:
        raise ValueError(f"paths must be among {', '.join(PATHS)}; got {sorted(unknown)}")
    pre = get_preset(preset)
    group_workers = group_workers or pre.workers
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "throughput.jsonl")
    specs = [case_spec(m, d, T, pre.vocab_size, batch) for m in mixers for d in d_models for T in seq_lens]
    rows = []

    def emit(spec, how, sec, **extra):
        rec = {"mixer": spec["mixer"], "d_model": spec["d_model"], "seq_len": spec["seq_len"], "path": how,
               "batch": spec["batch"], "steps": steps, "machine": machine_line(device), **extra}
        if isinstance(sec, str):
            rec["error"] = sec
        else:
            rec["model_steps_per_s"] = round(1.0 / sec, 2)
        rows.append(rec)
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    if "process" in paths:
        for spec, sec in zip(specs, time_processes(specs, preset, device=device, workers=workers, steps=steps,
                                                    warmup=warmup)):
            emit(spec, "process", sec, workers=workers)
    if "group_procs" in paths:
        for spec, sec in zip(specs, time_processes(specs, preset, device=device, workers=group_workers, steps=steps,
                                                    warmup=warmup, group_size=group_size)):
            emit(spec, "group_procs", sec, workers=group_workers, group_size=group_size,
                 graph=torch.device(device).type == "cuda")
    for spec in specs:
        for how in [p for p in paths if p in ("group", "group_graph", "group_graph_compiled")]:
            try:
                sec = time_group(spec, pre, device=device, group_size=group_size, graph=how != "group",
                                 steps=steps, warmup=warmup, compile=how == "group_graph_compiled") / group_size
            except Exception as e:  # noqa: BLE001 -- one case failing must not lose the others
                sec = f"{type(e).__name__}: {e}"[:300]
            emit(spec, how, sec, group_size=group_size)
    write_throughput_table(rows, out)
    return rows


def write_throughput_table(rows: list[dict], out: str) -> str:
    """<out>/throughput.md: model-steps/s per path, and each path's ratio to the process path where it ran."""
    paths = [p for p in PATHS if any(r["path"] == p for r in rows)]
    ratio_paths = [p for p in paths if p != "process"] if "process" in paths else []
    cols = ["mixer", "d", "T", *(f"{p} steps/s" for p in paths), *(f"{p}/process" for p in ratio_paths)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    keys = sorted({(r["mixer"], r["d_model"], r["seq_len"]) for r in rows}, key=lambda k: (k[0], k[1], k[2]))
    for key in keys:
        got = {r["path"]: r.get("model_steps_per_s") for r in rows if (r["mixer"], r["d_model"], r["seq_len"]) == key}
        cells = [f"{got[p]:.1f}" if got.get(p) else "error" for p in paths]
        base = got.get("process")
        ratios = [f"{got[p] / base:.1f}x" if got.get(p) and base else "-" for p in ratio_paths]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells + ratios) + " |")
    md = "\n".join(lines) + "\n"
    with open(os.path.join(out, "throughput.md"), "w", encoding="utf-8") as f:
        f.write(md)
    return md
