"""The zoo bench (Zoology, arXiv:2312.04927): `attnzoo zoo` sweeps mixers x d_model x lr on MQAR.

run.py the sweep (run_zoo, resume, workers, Ctrl-C) · models.py the models, kwargs and task data ·
presets.py the presets · schedule.py the time budget · results.py results.jsonl · report.py the
leaderboard and plots · progress.py the progress bar · pool.py worker processes · throughput.py
many models trained as one (GroupModel) against one at a time.
"""

from attnzoo.bench.zoo.models import build_model, check_mixers, default_mixers, machine_line, mixer_kwargs
from attnzoo.bench.zoo.presets import ZooPreset, floor_note, get_preset
from attnzoo.bench.zoo.results import KEY_FIELDS, RESULTS, append_result, read_results, run_key
from attnzoo.bench.zoo.run import ZooInterrupted, run_zoo

__all__ = ["KEY_FIELDS", "RESULTS", "ZooInterrupted", "ZooPreset", "append_result", "build_model", "check_mixers",
           "default_mixers", "floor_note", "get_preset", "machine_line", "mixer_kwargs", "read_results", "run_key",
           "run_zoo"]
