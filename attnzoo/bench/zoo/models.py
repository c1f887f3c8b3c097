"""The zoo's models: which mixers it sweeps, their kwargs, the task data, the machine line.

A Zoology-style LM (arXiv:2312.04927): n_layers blocks of the mixer alone, no MLP; a hybrid pattern
gets at least one layer per entry. `build_model` is the one place a zoo model is made (the sweep, the
probe, the throughput bench); tests patch it here.
"""

from __future__ import annotations


import traceback

import torch

from attnzoo.bench.machine import machine_line  # noqa: F401  (re-exported)
from attnzoo.bench.zoo.presets import ZooPreset
from attnzoo.models.lm import pattern_unit
from attnzoo.registry import get_card, list_mixers

SKIP_FAMILIES = ("vision",)


def default_mixers(preset: ZooPreset | None = None) -> list[str]:
    """The preset's own list (the paper's Figure 2 lines), else every registered causal sequence mixer
    (the zoo trains causal language models)."""
    if preset is not None and preset.mixers:
        return list(preset.mixers)
    return [n for n in list_mixers() if get_card(n).causal and get_card(n).family not in SKIP_FAMILIES]


_TASK_CACHE: dict = {}


def task_data(spec: dict, preset: ZooPreset):
    from attnzoo.tasks import token_task

    key = (spec["task"], spec["seq_len"], spec["num_pairs"], spec["vocab_size"], preset.num_train,
           preset.num_test, preset.seed, preset.random_non_queries)
    if key not in _TASK_CACHE:
        _TASK_CACHE.clear()
        _TASK_CACHE[key] = token_task(spec["task"], seq_len=spec["seq_len"], num_train=preset.num_train,
                                      num_test=preset.num_test, seed=preset.seed,
                                      num_pairs=max(1, spec["num_pairs"]), vocab_size=spec["vocab_size"],
                                      random_non_queries=preset.random_non_queries)
    return _TASK_CACHE[key]


def build_model(spec: dict, preset: ZooPreset):
    """A Zoology-style LM: n_layers blocks of the mixer alone (no MLP); hybrids get one layer per entry."""
    from attnzoo.models import LanguageModel

    names = pattern_unit(spec["mixer"])
    if preset.repeat_pattern:                       # Zoology's Hybrid: every layer runs the whole pattern
        n_layers = preset.n_layers * len(names)
    else:
        n_layers = max(preset.n_layers, len(names))
        if n_layers % len(names):
            n_layers = len(names) * -(-n_layers // len(names))
    kwargs = {n: mixer_kwargs(n, preset, spec["seq_len"]) for n in set(names)}
    layer_kwargs = {n: v for n, v in (preset.layer_kwargs or {}).items() if n in names} or None
    torch.manual_seed(preset.seed)
    positions = spec["seq_len"] if any(n in preset.positions for n in names) else None
    return LanguageModel(spec["vocab_size"], spec["d_model"], n_layers, spec["mixer"], mixer_kwargs=kwargs,
                         mlp_ratio=0, max_positions=positions, layer_kwargs=layer_kwargs, init=preset.init)


def mixer_kwargs(name: str, preset: ZooPreset, seq_len: int | None = None) -> dict:
    """The card's example_kwargs (conformance-sized), updated by the preset's override for `name`;
    a value "T" stands for the run's sequence length (Zoology's H3 has d_state = T)."""
    kwargs = dict(get_card(name).example_kwargs)
    kwargs.update((preset.mixer_kwargs or {}).get(name, {}))
    if seq_len is not None:
        kwargs = {k: seq_len if v == "T" else v for k, v in kwargs.items()}
    return kwargs


def check_mixers(mixers: list[str]):
    """Raise ValueError, before any run, for an unknown name, a bad pattern, or a non-causal mixer
    (alone or inside a hybrid pattern)."""
    if not mixers:
        raise ValueError("mixers must name at least one mixer or hybrid pattern, got none")
    for m in mixers:
        for name in dict.fromkeys(pattern_unit(m)):
            if not get_card(name).causal:
                where = "" if name == m else f" (in the pattern {m!r})"
                raise ValueError(
                    f"mixer {name!r}{where} is not causal: the zoo trains next-token language models, where a "
                    "non-causal mixer sees the token it predicts; expected causal mixers (`attnzoo list`)")


def base_record(spec: dict, preset: ZooPreset, device: str) -> dict:
    """What every record of a run says before its results: the spec, the preset's name, init, steps and
    target, and the machine (run.run_one, group.run_group and a broken pool's error records share it)."""
    return dict(spec, preset=preset.name, init=preset.init, machine=machine_line(device), max_steps=preset.steps,
                **({"schedule_steps": preset.schedule_steps} if preset.schedule_steps else {}),
                target_accuracy=preset.target_accuracy)


def error_text(e: BaseException, limit: int = 500) -> str:
    """A failed run's record: the exception and where in attnzoo it was raised (the innermost attnzoo
    frame, e.g. the kernel launch that failed), so a grid's error says where without a rerun."""
    where = [f for f in traceback.extract_tb(e.__traceback__) if "/attnzoo/" in f.filename.replace("\\", "/")]
    at = f" [at {where[-1].filename.rsplit('attnzoo', 1)[-1].lstrip('/')}:{where[-1].lineno} in {where[-1].name}]" \
        if where else ""
    text = f"{type(e).__name__}: {e}"
    return (text[: max(0, limit - len(at))] + at) if at else text[:limit]
