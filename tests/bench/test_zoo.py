import json

import pytest

from attnzoo.bench.zoo import models as zoo_models
from attnzoo.bench.zoo import read_results, run_key, run_zoo
from attnzoo.bench.zoo.presets import ZooPreset, get_preset
from attnzoo.bench.zoo.report import best_runs, leaderboard_markdown
from attnzoo.cli import main

TINY = ZooPreset(name="tiny", grid=((16, 2),), vocab_size=32, d_models=(16,), lrs=(1e-3, 3e-3), num_train=128,
                 num_test=32, batch_size=8, steps=3, eval_every=3, warmup_steps=1)
MIXERS = ["softmax", "sliding_window"]
VOLATILE = ("seconds", "machine", "probe_ms", "warmup_s")


def _stable(records):
    """The records without timing, in run order (parallel runs finish in any order)."""
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE} for r in records), key=run_key)


def test_killed_and_resumed_zoo_equals_uninterrupted(tmp_path):
    # the uninterrupted sweep runs 2 at a time in worker processes; the killed one in process
    full = run_zoo(preset=TINY, out=str(tmp_path / "a"), mixers=MIXERS, quiet=True, workers=2, threads=1)
    assert len(full) == 4 and all(r["accuracy"] is not None for r in full)

    out = str(tmp_path / "b")
    # killed between runs
    run_zoo(preset=TINY, out=out, mixers=MIXERS, quiet=True, max_runs=1, workers=1, threads=1)
    assert len(read_results(f"{out}/results.jsonl")) == 1

    def kill(step, loss):
        raise KeyboardInterrupt                                                      # killed inside a run
    with pytest.raises(KeyboardInterrupt):
        run_zoo(preset=TINY, out=out, mixers=MIXERS, quiet=True, resume=True, on_step=kill, workers=1)
    assert len(read_results(f"{out}/results.jsonl")) == 1                            # nothing half-written

    resumed = run_zoo(preset=TINY, out=out, mixers=MIXERS, quiet=True, resume=True, workers=1, threads=1)
    assert _stable(resumed) == _stable(full)                                         # no loss, no duplicate
    with open(f"{out}/results.jsonl") as f:
        lines = f.read().splitlines()
    assert len(lines) == 4 and all(json.loads(line)["machine"] for line in lines)
    assert (tmp_path / "b" / "leaderboard.md").exists() and (tmp_path / "b" / "zoo.png").stat().st_size > 1000


def test_best_lr_kept_per_mixer_and_width():
    base = {"task": "mqar", "mixer": "m", "d_model": 16, "seq_len": 16, "num_pairs": 2, "vocab_size": 32,
            "steps": 3, "state_bytes": 100, "machine": "x"}
    recs = [dict(base, lr=lr, accuracy=a) for lr, a in ((1e-3, 0.5), (3e-3, 0.9), (1e-2, 0.7))]
    recs.append(dict(recs[0], mixer="broken", accuracy=None, error="ValueError: boom"))
    best = best_runs(recs)
    assert len(best) == 1 and best[0]["lr"] == 3e-3
    md = leaderboard_markdown(recs)
    assert "0.900 (0.003, 3)" in md and "`broken`: ValueError: boom" in md
    assert "Initialisation" not in md                    # records without an init field: the default
    assert "Initialisation: gpt2" in leaderboard_markdown([dict(r, init="gpt2") for r in recs])


def test_a_failing_mixer_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    real = zoo_models.build_model

    def build(spec, preset):
        if spec["mixer"] == "sliding_window":
            raise RuntimeError("kaput")
        return real(spec, preset)
    monkeypatch.setattr(zoo_models, "build_model", build)
    recs = run_zoo(preset=TINY, out=str(tmp_path), mixers=MIXERS, quiet=True, workers=1)
    bad = [r for r in recs if r["mixer"] == "sliding_window"]
    assert len(recs) == 4 and all(r["accuracy"] is None and "kaput" in r["error"] for r in bad)


def test_hybrid_pattern_is_a_mixer(tmp_path):
    recs = run_zoo(preset=TINY, out=str(tmp_path), mixers=["softmax*1+sliding_window"], quiet=True, workers=1)
    assert len(recs) == 2 and recs[0]["state_bytes"] > 0 and recs[0].get("error") is None


def test_presets_and_errors():
    paper = get_preset("paper")
    assert paper.grid == ((64, 4), (128, 8), (256, 16), (512, 64)) and paper.vocab_size == 8192
    assert paper.lrs == pytest.approx((1e-4, 10 ** (-4 + 2 / 3), 10 ** (-4 + 4 / 3), 1e-2))   # logspace(-4, -2, 4)
    assert [paper.batch_for(T) for T in (64, 128, 256, 512)] == [512, 512, 256, 128]
    assert paper.group and not paper.random_non_queries and paper.positions == ("softmax",)
    assert paper.init == "gpt2" and get_preset("quick").init == "default"    # Zoology's init; the demo keeps its own
    with pytest.raises(ValueError, match="preset must be one of"):
        get_preset("huge")
    with pytest.raises(ValueError, match="unknown mixer"):
        run_zoo(preset=TINY, out="/nonexistent/never", mixers=["no_such_mixer"], quiet=True)
    assert main(["zoo", "--mixers", "no_such_mixer", "--out", "/nonexistent/never"]) == 2


def test_impossible_task_settings_fail_before_any_run(tmp_path):
    bad = ZooPreset(name="bad", grid=((16, 8),), vocab_size=32, d_models=(16,), lrs=(1e-3,), num_train=8,
                    num_test=8, batch_size=4, steps=1, eval_every=1)
    with pytest.raises(ValueError, match="4 \\* num_pairs <= seq_len"):
        run_zoo(preset=bad, out=str(tmp_path), mixers=["softmax"], quiet=True, workers=1)
    with pytest.raises(ValueError, match="seq_len must be >="):
        run_zoo(preset=TINY, out=str(tmp_path), mixers=["softmax"], task="passkey", quiet=True, workers=1)
    assert not (tmp_path / "results.jsonl").exists()


def test_an_error_record_names_where_in_attnzoo_it_was_raised():
    from attnzoo.registry import build

    try:
        build("mamba2", d_model=24, head_dim=7)     # d_inner 48 is not divisible by 7
    except ValueError as e:
        text = zoo_models.error_text(e)
    assert text.startswith("ValueError: d_inner") and "[at mixers/mamba2.py:" in text and "in __init__]" in text
    long = zoo_models.error_text(RuntimeError("x" * 2000))          # no attnzoo frame: the message, capped
    assert long == "RuntimeError: " + "x" * 486 and len(long) == 500


def test_plot_gives_a_mixer_the_same_colour_in_every_panel(tmp_path, monkeypatch):
    import matplotlib.figure

    from attnzoo.bench.zoo.report import plot_zoo

    figs = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: figs.append(self))
    rec = lambda m, T, d, acc: dict(task="mqar", mixer=m, seq_len=T, num_pairs=T // 16, d_model=d,  # noqa: E731
                                    lr=1e-3, accuracy=acc, state_bytes=d * 100, steps=10)
    recs = [rec("a", 64, 64, 0.5), rec("b", 64, 64, 0.6), rec("c", 64, 64, 0.7), rec("c", 128, 64, 0.2)]
    plot_zoo(recs, str(tmp_path / "z.png"))
    colour = {}
    for ax in figs[0].axes:
        for line in ax.get_lines():
            colour.setdefault(line.get_label(), set()).add(line.get_color())
    assert set(colour) == {"a", "b", "c"} and all(len(c) == 1 for c in colour.values()), colour


def test_preset_init_reaches_the_models_and_the_records(tmp_path):
    with pytest.raises(ValueError, match="init must be"):
        get_preset("quick", init="xavier")
    spec = dict(task="mqar", mixer="softmax", d_model=64, lr=1e-3, seq_len=32, num_pairs=4, vocab_size=64)
    lm = zoo_models.build_model(spec, get_preset("quick", init="gpt2"))
    assert abs(lm.blocks[0].mixer.o_proj.weight.std().item() / 0.01 - 1) < 0.15    # 0.02 / sqrt(2 x 2 layers)
    default = zoo_models.build_model(spec, get_preset("quick"))
    assert default.blocks[0].mixer.o_proj.weight.std().item() > 0.05
    recs = run_zoo(preset=get_preset("quick", init="gpt2", steps=2, d_models=(16,)), out=str(tmp_path),
                   mixers=["softmax"], quiet=True, workers=1)
    assert recs and all(r["init"] == "gpt2" for r in recs)
