"""Presets of the zoo sweep: which (T, pairs), vocabulary, widths, learning rates and budgets.

quick     a 2-core CPU, all registered causal mixers (~40-45) in about 10 minutes, and attention learns
          the task (softmax >= 0.99). A smaller MQAR setting than Zoology's smallest: T=32, 4 pairs,
          vocab 64 (T=64, vocab 128 until issue #23 part 4); d_model 64, lr 3e-3, batch 64, warm-up 20
          steps then cosine (Zoology's schedule) over 1000 steps; one single-threaded run per core;
          mixers at Zoology-like sizes (QUICK_MIXER_KWARGS: one head for full attention), no MLP (as
          Zoology), RoPE rather than Zoology's learned positions (measured at T=64, an 800-step
          schedule: RoPE 0.99 at step 725 (seed 1), learned positions plus RoPE 0.84, learned alone
          0.35 (seed 0)). Budget: at most 1000 steps per run and at most half the time the median
          run's 1000 steps take (time_cap_ratio 0.5, from the step times probed at the start;
          schedule.capped_steps): a dearer run trains the steps that time buys, its cosine spanning
          them (‡ in the leaderboard), so slow mixers rank lower for being slow. Early stop at 0.99.
          The plan is in steps (min_steps = steps), so it does not shrink on a loaded machine: the
          sweep takes longer instead.
          Why (measured on the shared 2-core CPU, 1 thread per run, seeds 0, 1, 2, Dec 2026): softmax at
          T=64, vocab 128 reached 0.99 at steps 700-725 of 800- and 1500-step schedules (seeds 0, 1;
          seed 2 stayed on the 0.25 plateau for 800 steps; 600 steps ended at 0.83), and 39 mixers at
          T=64 cost ~6.3 s per step of each; at T=32, vocab 64 a step costs ~1/2 to 1/3 as much and
          softmax reached 0.99 at steps 475, 650, 625 of a 1000-step schedule (833 steps: seed 2 ended
          at 0.987; 700: 0.93). Batch 32 at twice the steps reached it at about the same wall time
          (1175-1225 steps); lr 6e-3 and 1e-2 stayed on the plateau at T=64, lr 2e-3 climbed slower.
          Without the cap, 1000 equal steps of 39 mixers need ~1.4 s x 1000 / 2 cores (kda 0.66 s,
          rwkv7 0.5 s, mesanet 0.3 s per step); with it, ~0.8 s x 1000 / 2: the cheapest (<= 0.5 x the
          median step) get all 1000 steps, the others the same time each (step times: `attnzoo bench
          step-cost`). The committed run (benchmarks/results/zoo_quick_cpu: 39 mixers, 427 s wall for
          the whole demo at load <= 2.5): 4 runs took all 1000 steps, 35 were capped (softmax at 722:
          its probe was 1.7x its in-run step; it still reached 0.991), 393 s of runs per core.
standard  one GPU in about 9 minutes: two settings, two widths, two learning rates, eight runs
          at once on the GPU (each tiny model leaves it mostly idle; the step count is planned with
          the step times measured for 8 runs sharing an H200, schedule.contention_for).
paper     Zoology's Figure 2 recipe (Arora et al. 2023, arXiv:2312.04927; the figure's configs in
          HazyResearch/zoology): (T, pairs) = (64,4), (128,8), (256,16) and (512,64) as an extension;
          vocab 8192; 100,000 train / 3,000 test sequences; batch 512 (T <= 128), 256 (T = 256), 128
          (T = 512); lr ∈ logspace(-4, -2, 4), trained as one group per (mixer, d_model, T) (group.py);
          d_model 64..512; 2 layers of the mixer alone (no MLP); AdamW, weight decay 0.1; attention with
          1 head and learned absolute positions (no RoPE), the other mixers without positions; Based =
          BaseConv then Taylor linear attention (feature_dim 8, 1 head, no sliding window) in every
          layer; BaseConv layers alternate kernel 3 and a long implicit kernel; H3 with d_state = T and
          head_dim 2; Hyena's filters as long as T. Zoology trains 64 epochs (12,500 steps at T <= 128):
          `steps` is that; a GPU session passes fewer with --steps and says so (early stop at 0.99),
          better with --schedule-steps 12500 too: the cosine keeps Zoology's length and --steps only caps
          the training, so a run that reaches 0.99 first is the full recipe's run (softmax at d=64 needs
          its lr high for ~1750 steps: 0.483 under a 1500-step schedule, 0.998 under 6000).
          Differences that remain: PAPER_DIFFERENCES.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np


def _int(x, low: int) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool) and x >= low


def _positive(x) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _nonempty(x, item_ok) -> bool:
    return isinstance(x, (tuple, list)) and len(x) > 0 and all(item_ok(v) for v in x)


@dataclass(frozen=True)
class ZooPreset:
    name: str
    grid: tuple                     # ((seq_len, num_pairs), ...)
    vocab_size: int
    d_models: tuple
    lrs: tuple
    num_train: int
    num_test: int
    batch_size: int
    steps: int                      # most steps a run takes
    eval_every: int
    n_layers: int = 2
    target_accuracy: float = 0.99
    weight_decay: float = 0.1
    warmup_steps: int = 20
    total_seconds: float | None = None     # wall-clock budget of the whole sweep (None: none)
    run_seconds: float | None = None       # cap per run (None: none)
    min_steps: int = 1                      # steps every run gets even when total_seconds is too short
    workers: int = 8                        # runs at once on CUDA (processes); on a CPU one per core
    seed: int = 0
    mixer_kwargs: dict | None = None        # per mixer name: constructor kwargs over the card's example_kwargs
    batch_sizes: dict | None = None         # per seq_len: a batch size other than batch_size (Zoology's)
    group: bool = False                     # train a (mixer, d_model, T)'s learning rates as one group (group.py)
    positions: tuple = ()                   # mixers whose models get learned absolute positions (Zoology: attention)
    layer_kwargs: dict | None = None        # per mixer name: kwargs cycled over its layers (models.LanguageModel)
    repeat_pattern: bool = False            # a hybrid pattern runs whole in each of the n_layers (Zoology's Hybrid)
    mixers: tuple | None = None             # the mixers swept when none are named (None: every causal mixer)
    random_non_queries: bool = True         # MQAR fillers random tokens (True) or zeros (Zoology's Figure 2: False)
    compile: tuple = ()                     # mixers (or patterns) whose runs train under torch.compile ("all": every
    # run; a group's step is compiled whole, GroupStep(compile=True)), an opt-in: on a CPU it paid for kda, rwkv7,
    # hgrn, gaam alone (benchmarks/results/compile/); compiled groups are not yet timed on a GPU
    time_cap_ratio: float | None = None     # a run whose steps would take more than this many times the median
    # run's (probed) time gets the steps that time buys (schedule.capped_steps); None: equal steps for all
    init: str = "default"                   # models.LanguageModel's init: "default" or "gpt2" (Zoology's)
    schedule_steps: int | None = None       # the cosine spans this many steps while a run stops at `steps`
    # (None: steps): e.g. Zoology's 12,500-step schedule under a session's compute cap; a run that reaches the
    # target before the cap is exactly the full recipe's, one cut at the cap a lower bound of it

    def batch_for(self, seq_len: int) -> int:
        return int((self.batch_sizes or {}).get(seq_len, self.batch_size))

    def compiles(self, mixer: str) -> bool:
        """Whether `mixer`'s runs (alone or as a group) train under torch.compile (`compile`)."""
        return mixer in self.compile or "all" in self.compile

    def __post_init__(self):
        """Settings no run could use fail here, before any run, naming what was expected."""
        checks = [
            ("grid", _nonempty(self.grid, lambda g: isinstance(g, (tuple, list)) and len(g) == 2
                                and _int(g[0], 1) and _int(g[1], 0)),
             "at least one (seq_len >= 1, num_pairs >= 0) pair"),
            ("d_models", _nonempty(self.d_models, lambda d: _int(d, 1)), "at least one width, each an integer >= 1"),
            ("lrs", _nonempty(self.lrs, _positive), "at least one learning rate, each a finite number > 0"),
            *((k, _int(getattr(self, k), 1), "an integer >= 1")
              for k in ("vocab_size", "num_train", "num_test", "batch_size", "steps", "eval_every", "n_layers",
                        "min_steps", "workers")),
            ("warmup_steps", _int(self.warmup_steps, 0), "an integer >= 0"),
            ("weight_decay", self.weight_decay == 0 or _positive(self.weight_decay), "a finite number >= 0"),
            ("target_accuracy", self.target_accuracy is None or (_positive(self.target_accuracy)
                                                                 and self.target_accuracy <= 1), "None or in (0, 1]"),
            *((k, getattr(self, k) is None or _positive(getattr(self, k)), "None or a finite number of seconds > 0")
              for k in ("total_seconds", "run_seconds")),
            ("time_cap_ratio", self.time_cap_ratio is None or _positive(self.time_cap_ratio), "None or a number > 0"),
            ("mixer_kwargs", self.mixer_kwargs is None or isinstance(self.mixer_kwargs, dict), "None or a dict"),
            ("init", self.init in ("default", "gpt2"), "'default' or 'gpt2'"),
            ("compile", isinstance(self.compile, (tuple, list)) and all(isinstance(m, str) for m in self.compile),
             "a tuple of mixer names or patterns (or 'all')"),
            ("batch_sizes", self.batch_sizes is None or (isinstance(self.batch_sizes, dict) and all(
                _int(k, 1) and _int(v, 1) for k, v in self.batch_sizes.items())), "None or {seq_len: batch >= 1}"),
        ]
        for field, ok, expected in checks:
            if not ok:
                raise ValueError(f"zoo preset {self.name!r}: {field} must be {expected}, got {getattr(self, field)!r}")
        if self.schedule_steps is not None and not (_int(self.schedule_steps, 1) and self.schedule_steps >= self.steps):
            raise ValueError(f"zoo preset {self.name!r}: schedule_steps must be None or an integer >= steps "
                             f"({self.steps}), got {self.schedule_steps!r}")
        if self.min_steps > self.steps:
            raise ValueError(f"zoo preset {self.name!r}: min_steps ({self.min_steps}) must be <= steps ({self.steps})")


# The quick preset builds each mixer at a Zoology-like size instead of its conformance-sized card
# example (often 4 heads): one head for full attention (Zoology's MQAR sweep; measured on softmax
# at 600 steps: 1 head 0.90, 2 heads 0.51, 4 heads 0.27), two for the recurrent families, a long
# convolution as long as T for base_conv. Mamba keeps its chunks of 8 (chunks of 64 ran 4 s/step,
# d_state 16 1 s/step). Per-step costs: `attnzoo bench step-cost`.
QUICK_MIXER_KWARGS = {
    "softmax": {"n_heads": 1, "n_kv_heads": 1},
    "gated_softmax": {"n_heads": 1, "n_kv_heads": 1},
    "prompt_tuning": {"n_heads": 1, "n_kv_heads": 1},
    "sliding_window": {"n_heads": 1},
    "fox": {"n_heads": 1},
    "stickbreaking": {"n_heads": 1},
    "block_sparse": {"n_heads": 2, "n_kv_heads": 1},
    "routing": {"n_heads": 2, "n_local_heads": 1, "n_clusters": 4, "window": 8},
    "base_conv": {"l_max": "T"},
    "mamba2": {"head_dim": 32},
    "rwkv6": {"n_heads": 2},
    "h3": {"head_dim": 1},
    "gaam": {"n_heads": 2},
}

# Zoology's Figure 2 choices where ours differ by default (the figure's configs in HazyResearch/zoology).
PAPER_MIXER_KWARGS = {
    "softmax": {"n_heads": 1, "n_kv_heads": 1, "rope": False},
    "based": {"n_heads": 1, "feature_dim": 8, "window": 0},
    "base_conv": {"l_max": "T"},
    "h3": {"d_state": "T", "head_dim": 2},
    "hyena": {"l_max": "T"},
}
PAPER_LAYER_KWARGS = {"base_conv": [{"kernel_size": 3}, {"kernel_size": -1}]}
PAPER_MIXERS = ("softmax", "base_conv,based", "base_conv", "h3", "hyena", "mamba", "gla", "gated_deltanet",
                "deltanet", "mamba2", "rwkv6")
PAPER_DIFFERENCES = (
    "blocks are pre-norm RMSNorm residual blocks (Zoology: LayerNorm)",
    "attention has no dropout (Zoology: 0.1)",
    "the recurrent mixers (gla, gated_deltanet, deltanet, mamba2, rwkv6, mamba) keep their cards' example sizes "
    "(head counts, state widths) rather than the sizes of Zoology's own implementations",
    "steps: fewer than Zoology's 64 epochs when a run passes --steps (early stop at 0.99 either way)",
)

PRESETS = {
    "quick": ZooPreset(
        name="quick", grid=((32, 4),), vocab_size=64, d_models=(64,), lrs=(3e-3,), num_train=20_000,
        num_test=256, batch_size=64, steps=1000, min_steps=1000, eval_every=50, total_seconds=570.0,
        time_cap_ratio=0.5, mixer_kwargs=QUICK_MIXER_KWARGS,
    ),
    "standard": ZooPreset(
        name="standard", grid=((64, 4), (128, 8)), vocab_size=2048, d_models=(64, 128), lrs=(1e-3, 3e-3),
        num_train=50_000, num_test=1000, batch_size=128, steps=4000, eval_every=100,
        total_seconds=480.0, run_seconds=60.0, workers=8,
    ),
    "paper": ZooPreset(
        name="paper", grid=((64, 4), (128, 8), (256, 16), (512, 64)), vocab_size=8192,
        d_models=(64, 128, 256, 512), lrs=tuple(float(x) for x in np.logspace(-4, -2, 4)),
        num_train=100_000, num_test=3000, batch_size=512, batch_sizes={256: 256, 512: 128}, steps=12_500,
        eval_every=250, workers=2, group=True, positions=("softmax",), mixer_kwargs=PAPER_MIXER_KWARGS,
        layer_kwargs=PAPER_LAYER_KWARGS, repeat_pattern=True, mixers=PAPER_MIXERS, random_non_queries=False,
        # Zoology's models use GPT-2's init; with nn.Linear's, attention stayed at 0.48 at d=64 in 1500 steps,
        # with GPT-2's it reached 0.997 (H100, benchmarks/results/zoo_paper_gpt2/; zoo_paper/ is the default-init run)
        init="gpt2",
    ),
}


def get_preset(name: str, **overrides) -> ZooPreset:
    """PRESETS[name] with the overrides that are not None (checked: bad values raise ValueError).

    An explicit `steps` is honoured: below the preset's floor (min_steps), the floor comes down to
    it, so the runs take that many steps and not the floor (floor_note says so to the user); and
    every run takes them: the preset's time cap (time_cap_ratio) is off unless also given."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {name!r}")
    base, overrides = PRESETS[name], {k: v for k, v in overrides.items() if v is not None}
    steps = overrides.get("steps")
    if "min_steps" not in overrides and _int(steps, 1) and steps < base.min_steps:
        overrides["min_steps"] = steps
    if steps is not None and "time_cap_ratio" not in overrides:
        overrides["time_cap_ratio"] = None
    return replace(base, **overrides)


def floor_note(name: str, steps: int | None) -> str | None:
    """A line for the user when an explicit `steps` is below what preset `name` recommends (its min_steps)."""
    floor = PRESETS[name].min_steps if name in PRESETS else 1
    if steps is None or steps >= floor:
        return None
    return (f"note: running {steps} steps per run as asked; the {name} preset recommends at least {floor} "
            "(fewer may be too few to rank the mixers)")
