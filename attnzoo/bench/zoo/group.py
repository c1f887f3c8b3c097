"""The zoo's runs of one (mixer, d_model, T) over its learning rates, trained as one group.

Zoology picks the best of 4 learning rates per (mixer, d_model, T); those 4 runs have equal shapes
and data, so `attnzoo.train.group.train_many` trains them as one batched model (vmap over stacked
parameters; on CUDA each step replayed from a CUDA graph): a tiny model's step costs about what one
run's did, for all 4. Every member gets the record `run_one` would have written for it alone (the
equivalence is tested in tests/train/test_group.py), plus `group_size` and `group_note` (None when
grouped, else why the members ran one at a time).
"""

from __future__ import annotations

import math
import time

import torch

from attnzoo.bench.zoo import models
from attnzoo.bench.zoo.models import task_data
from attnzoo.bench.zoo.presets import ZooPreset


def group_specs(specs: list[dict]) -> list[dict]:
    """Specs that differ only in lr merged into one group spec with "lrs" (in planned order)."""
    groups: dict = {}
    for s in specs:
        key = tuple((k, v) for k, v in s.items() if k not in ("lr", "lrs"))
        groups.setdefault(key, dict(s, lrs=[]))["lrs"].append(s["lr"])
    return list(groups.values())


def member_specs(spec: dict) -> list[dict]:
    """The single-run specs of a group spec (a plain spec is its own only member)."""
    if "lrs" not in spec:
        return [spec]
    base = {k: v for k, v in spec.items() if k != "lrs"}
    return [dict(base, lr=float(lr)) for lr in spec["lrs"]]


def run_group(spec: dict, preset: ZooPreset, *, device: str, max_seconds: float | None,
              on_step=None, on_eval=None) -> list[dict]:
    """Train every lr of a group spec; one record per member (with an 'error' field if it failed)."""
    from attnzoo.train import TrainConfig
    from attnzoo.train.group import train_many

    members = member_specs(spec)
    base = [dict(models.base_record(m, preset, device), group_size=len(members)) for m in members]
    t0 = time.perf_counter()
    try:
        data = task_data(spec, preset)
        lms = [models.build_model(m, preset) for m in members]      # the preset's seed: equal inits, as alone
        cfg = TrainConfig(steps=preset.steps, schedule_steps=preset.schedule_steps,
                          batch_size=preset.batch_for(spec["seq_len"]), lr=members[0]["lr"],
                          weight_decay=preset.weight_decay, warmup_steps=preset.warmup_steps,
                          eval_every=preset.eval_every, target_accuracy=preset.target_accuracy,
                          max_seconds=max_seconds, seed=preset.seed, device=device)
        graph = torch.device(device).type == "cuda"
        compiled = preset.compiles(spec["mixer"])
        results, note = train_many(lms, lrs=[m["lr"] for m in members], train=data.train, test=data.test,
                                   config=cfg, graph=graph, compile=compiled,
                                   on_step=None if on_step is None else (lambda s, losses: on_step(s, min(losses))),
                                   on_eval=None if on_eval is None else (lambda s, i, lo, a: on_eval(s, lo, a)))
        recs = []
        for rec, res, lm in zip(base, results, lms):
            rec.update(accuracy=round(res.accuracy, 6), loss=round(res.loss, 6), steps=res.steps,
                       stopped=res.stopped, warmup_s=round(res.warmup_seconds, 3),
                       state_bytes=int(lm.state_bytes(spec["seq_len"])),
                       params=sum(p.numel() for p in lm.parameters()), group_note=note,
                       graph_note=getattr(train_many, "graph_note", None),
                       **({"compiled": True} if compiled and note is None else {}))
            if spec["task"] == "bytes":
                rec["bits_per_byte"] = round(res.loss / math.log(2), 4)
            recs.append(rec)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 -- a broken mixer must not stop the sweep: record why and go on
        recs = [dict(r, accuracy=None, error=models.error_text(e), steps=0, stopped="error")
                for r in base]
    seconds = round(time.perf_counter() - t0, 2)
    return [dict(r, seconds=seconds) for r in recs]
