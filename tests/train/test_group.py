"""Many models trained as one (attnzoo.train.group): each member's losses, accuracies and final
weights equal training that member alone with train_lm (same seed, data order and config)."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.models import LanguageModel
from attnzoo.tasks import token_task
from attnzoo.train import TrainConfig, train_lm
from attnzoo.train.group import GroupAdamW, group_error, train_group, train_many
from attnzoo.train.group_optim import FlatParams, clip_member_grads

LRS = (1e-3, 3e-3, 1e-2)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def models(mixer, seeds, d=32):
    kw = {mixer: dict(attnzoo.get_card(mixer).example_kwargs)}
    out = []
    for s in seeds:
        torch.manual_seed(s)
        out.append(LanguageModel(64, d, 2, mixer, mixer_kwargs=kw, mlp_ratio=0).double())
    return out


def data():
    return token_task("mqar", seq_len=32, num_train=256, num_test=64, seed=0, num_pairs=4, vocab_size=64)


def config(**kw):
    base = dict(steps=12, batch_size=16, warmup_steps=3, eval_every=4, eval_batch_size=32, seed=0, amp=False)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("mixer", ["softmax", "gla", "gated_deltanet", "mamba", "base_conv", "routing", "moh"])
def test_each_member_trains_as_it_would_alone(mixer):
    d = data()
    group = models(mixer, seeds=(0, 1, 2))
    alone = models(mixer, seeds=(0, 1, 2))
    res, note = train_many(group, lrs=LRS, train=d.train, test=d.test, config=config(lr=LRS[0]))
    assert (note is None) == (mixer != "moh"), note     # moh routes with data-dependent shapes: one at a time
    for i, lr in enumerate(LRS):
        ref = train_lm(alone[i], train=d.train, test=d.test, config=config(lr=lr))
        assert res[i].steps == ref.steps and res[i].stopped == ref.stopped
        for a, b in zip(res[i].history, ref.history):
            assert a["step"] == b["step"]
            assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9, abs=1e-12)
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-9, abs=1e-12)
            assert a["accuracy"] == b["accuracy"]
        for (n, p), (_, q) in zip(group[i].named_parameters(), alone[i].named_parameters()):
            torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=f"member {i} parameter {n}")


def test_a_member_that_reaches_the_target_stops_and_the_rest_go_on():
    d = data()
    group = models("softmax", seeds=(0, 1))
    alone = models("softmax", seeds=(0, 1))
    cfg = dict(lr=1e-2, steps=16, eval_every=2)
    first = train_lm(alone[0], train=d.train, test=d.test, config=config(**cfg))
    # a target the first member reaches at its first evaluation, the other member never (lr tiny)
    target = first.history[0]["accuracy"]
    alone = models("softmax", seeds=(0, 1))
    res = train_group(group, lrs=(1e-2, 1e-7), train=d.train, test=d.test,
                      config=config(**cfg, target_accuracy=max(target, 1e-6)))
    ref0 = train_lm(alone[0], train=d.train, test=d.test, config=config(**cfg, target_accuracy=max(target, 1e-6)))
    assert res[0].stopped == ref0.stopped and res[0].steps == ref0.steps
    for (n, p), (_, q) in zip(group[0].named_parameters(), alone[0].named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=n)
    if res[1].stopped != "target":
        assert res[1].steps == 16 and len(res[1].history) == 8


def test_group_adamw_matches_torch_adamw_per_member():
    torch.manual_seed(0)
    ws = [torch.randn(4, 3, dtype=torch.float64) for _ in range(2)]
    unused = torch.randn(2, 5, 2, dtype=torch.float64)
    fp = FlatParams({"w.weight": torch.stack(ws), "unused.weight": unused.clone(),
                     "norm.weight": torch.stack([w[0] for w in ws])})
    # unused.weight never gets a gradient: torch.optim leaves it untouched (weight decay included)
    stacked = fp.params
    opt = GroupAdamW(fp, weight_decay=0.1)
    ref = [torch.nn.Parameter(w.clone()) for w in ws]
    ref_n = [torch.nn.Parameter(w[0].clone()) for w in ws]        # a norm weight: no weight decay
    ref_opts = [torch.optim.AdamW([{"params": [r]}, {"params": [n], "weight_decay": 0.0}], lr=lr, weight_decay=0.1)
                for r, n, lr in zip(ref, ref_n, (1e-2, 3e-1))]
    for _ in range(5):
        g, gn = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
        stacked["w.weight"].grad, stacked["norm.weight"].grad = g.clone(), gn.clone()
        grad = fp.grad()
        assert fp.with_grad is not None and int(fp.with_grad.sum()) == 12 + 3
        fp.clear_grads()
        opt.step(grad, torch.tensor([1e-2, 3e-1], dtype=torch.float64), fp.with_grad)
        for r, n, o, gi, gni in zip(ref, ref_n, ref_opts, g, gn):
            r.grad, n.grad = gi.clone(), gni.clone()
            o.step()
    for i in range(2):
        torch.testing.assert_close(stacked["w.weight"][i].detach(), ref[i].detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(stacked["norm.weight"][i].detach(), ref_n[i].detach(), rtol=1e-12, atol=1e-14)
    assert torch.equal(stacked["unused.weight"].detach(), unused)
    assert fp.data.data_ptr() == stacked["w.weight"].data_ptr()     # the params are views of the flat buffer


def test_flat_clip_matches_torch_per_member():
    torch.manual_seed(1)
    fp = FlatParams({"a": torch.randn(3, 4, 5, dtype=torch.float64), "b": torch.randn(3, 7, dtype=torch.float64)})
    grads = {"a": torch.randn(3, 4, 5, dtype=torch.float64) * torch.tensor([0.01, 1.0, 10.0])[:, None, None],
             "b": torch.randn(3, 7, dtype=torch.float64)}
    for k, p in fp.params.items():
        p.grad = grads[k].clone()
    flat = fp.grad()
    flat = clip_member_grads(flat, 1.0)
    for i in range(3):
        ref = [torch.nn.Parameter(torch.zeros_like(grads[k][i])) for k in ("a", "b")]
        for r, k in zip(ref, ("a", "b")):
            r.grad = grads[k][i].clone()
        torch.nn.utils.clip_grad_norm_(ref, 1.0)
        torch.testing.assert_close(flat[i], torch.cat([r.grad.flatten() for r in ref]), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="one dtype"):
        FlatParams({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3, dtype=torch.float64)})


def test_bad_groups_are_refused():
    d = data()
    with pytest.raises(ValueError, match="one lr per model"):
        train_group(models("softmax", (0, 1)), lrs=(1e-3,), train=d.train, test=d.test, config=config())
    with pytest.raises(ValueError, match="same parameter"):
        train_group([*models("softmax", (0,)), *models("softmax", (1,), d=16)], lrs=(1e-3, 1e-3),
                    train=d.train, test=d.test, config=config())


def test_group_error_names_why_a_mixer_cannot_be_grouped():
    d = data()
    assert group_error(models("gla", (0, 1)), sample_ids=d.train[0][:16]) is None
    why = group_error(models("moh", (0, 1)), sample_ids=d.train[0][:16])
    assert why is not None and "vmap" in why


def test_a_run_capped_below_its_schedule_follows_the_longer_run():
    """schedule_steps: the cosine spans 24 steps while training stops at 12. Alone and in a group, the
    capped run's history equals the first 12 steps of the 24-step run (same lr at every step), and
    differs from a run whose schedule ends at 12 (its lr anneals sooner)."""
    d = data()
    full = train_lm(models("gla", seeds=(0,))[0], train=d.train, test=d.test, config=config(lr=3e-3, steps=24))
    capped_model = models("gla", seeds=(0,))[0]
    capped = train_lm(capped_model, train=d.train, test=d.test,
                      config=config(lr=3e-3, steps=12, schedule_steps=24))
    short = train_lm(models("gla", seeds=(0,))[0], train=d.train, test=d.test, config=config(lr=3e-3, steps=12))
    assert capped.steps == 12 and [h["step"] for h in capped.history] == [4, 8, 12]
    for a, b in zip(capped.history, full.history):
        assert a["step"] == b["step"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-12)
    assert capped.history[-1]["train_loss"] != pytest.approx(short.history[-1]["train_loss"], rel=1e-9)
    grouped = models("gla", seeds=(0, 1))
    res = train_group(grouped, lrs=(3e-3, 1e-2), train=d.train, test=d.test,
                      config=config(lr=3e-3, steps=12, schedule_steps=24))
    for a, b in zip(res[0].history, capped.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9, abs=1e-12)
    for (n, p), (_, q) in zip(grouped[0].named_parameters(), capped_model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11, msg=n)
    with pytest.raises(ValueError, match="schedule_steps"):
        config(steps=12, schedule_steps=8).check()
