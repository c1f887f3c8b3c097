"""The zoo's paper preset trains each (mixer, d_model, T)'s learning rates as one group (issue #23):
one record per member, the same as the member trained alone, and resume finishes a partial group."""

from dataclasses import replace

import pytest

from attnzoo.bench.zoo import get_preset, read_results, run_zoo
from attnzoo.bench.zoo.group import group_specs, member_specs

TINY = replace(get_preset("paper"), grid=((16, 2),), vocab_size=32, d_models=(16,), lrs=(1e-3, 3e-3),
               num_train=96, num_test=32, batch_size=16, batch_sizes=None, steps=6, eval_every=3,
               warmup_steps=1, target_accuracy=None)


def test_group_specs_merge_only_the_learning_rates():
    specs = [{"mixer": m, "d_model": 16, "lr": lr, "seq_len": 16} for m in ("a", "b") for lr in (1e-3, 3e-3)]
    groups = group_specs(specs)
    assert [(g["mixer"], g["lrs"]) for g in groups] == [("a", [1e-3, 3e-3]), ("b", [1e-3, 3e-3])]
    assert member_specs(groups[0]) == specs[:2]


@pytest.mark.parametrize("mixer", ["softmax", "base_conv,based"])
def test_grouped_sweep_equals_runs_alone(tmp_path, mixer):
    grouped = run_zoo(preset=TINY, out=str(tmp_path / "g"), mixers=[mixer], quiet=True, workers=1, threads=1)
    alone = run_zoo(preset=replace(TINY, group=False), out=str(tmp_path / "a"), mixers=[mixer], quiet=True,
                    workers=1, threads=1)
    assert len(grouped) == len(alone) == 2
    for g, a in zip(sorted(grouped, key=lambda r: r["lr"]), sorted(alone, key=lambda r: r["lr"])):
        assert g["group_size"] == 2 and g["group_note"] is None and "error" not in g, g
        assert g["steps"] == a["steps"] == 6 and g["state_bytes"] == a["state_bytes"]
        assert g["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-4)


def test_resume_runs_only_the_missing_members(tmp_path):
    out = str(tmp_path)
    run_zoo(preset=replace(TINY, lrs=(1e-3,)), out=out, mixers=["softmax"], quiet=True, workers=1)
    recs = run_zoo(preset=TINY, out=out, mixers=["softmax"], quiet=True, workers=1, resume=True)
    assert sorted(r["lr"] for r in recs) == [1e-3, 3e-3]
    assert [r.get("group_size") for r in read_results(f"{out}/results.jsonl")] == [1, 1]
