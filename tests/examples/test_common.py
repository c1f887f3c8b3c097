"""examples/_common.py: the shared command line, training loop and result line of the examples."""

import pytest
import torch

from _common import cpu_threads, example_args, fit, report, validation_mse


def hand_loop(model, data, *, steps, lr, clip_norm):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for i in range(steps):
        x, y = data[i]
        loss = (model(x) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        opt.step()
        sched.step()


def test_fit_matches_the_hand_written_loop():
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(8, 3, generator=g), torch.randn(8, 2, generator=g)) for _ in range(5)]
    torch.manual_seed(0)
    a = torch.nn.Linear(3, 2)
    b = torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    hand_loop(a, data, steps=5, lr=0.1, clip_norm=0.05)
    it = iter(data)
    losses = fit(b, lambda: next(it), lambda x, y: (b(x) - y).square().mean(), steps=5, lr=0.1,
                 optimizer="adamw", clip_norm=0.05,
                 lr_schedule=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5))
    assert len(losses) == 5 and losses[-1] < losses[0]
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_fit_passes_a_lone_tensor_whole_and_keeps_adamw_default_decay():
    w = torch.nn.Parameter(torch.ones(3))
    seen = []
    fit([w], lambda: torch.zeros(3), lambda x: seen.append(x.shape) or (w * 0).sum(), steps=2, lr=0.1,
        optimizer="adamw")
    assert seen == [torch.Size([3])] * 2
    assert torch.allclose(w, torch.full((3,), (1 - 0.1 * 0.01) ** 2))  # zero gradient: only AdamW's 0.01 decay


def test_fit_rejects_bad_input():
    w = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="optimizer"):
        fit([w], lambda: w, lambda x: x.sum(), steps=1, lr=0.1, optimizer="sgd")
    with pytest.raises(ValueError, match="steps"):
        fit([w], lambda: w, lambda x: x.sum(), steps=-1, lr=0.1)


def test_example_args_resolves_steps_sets_seed_and_threads():
    before = torch.get_num_threads()
    try:
        a = example_args("doc line\nmore", ["--small"], default_steps=300, small_steps=5)
        assert (a.small, a.steps, a.seed, a.threads) == (True, 5, 0, 1) and torch.get_num_threads() == 1
        assert example_args("d", [], default_steps=300, small_steps=5).steps == 300
        assert example_args("d", ["--small", "--steps", "7"], default_steps=300, small_steps=5).steps == 7
        a = example_args("d", ["--seed", "3", "--width", "9"], default_steps=3, small_steps=1,
                         extra=lambda ap: ap.add_argument("--width", type=int, default=1))
        drawn = torch.rand(4)  # right after the seed was set to 3
        torch.manual_seed(3)
        assert a.width == 9 and torch.equal(drawn, torch.rand(4))
        with pytest.raises(ValueError, match="default_steps"):
            example_args("d", [], default_steps=0, small_steps=5)
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_restores_and_rejects_zero():
    before = torch.get_num_threads()
    with cpu_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        with cpu_threads(0):
            pass


def test_validation_mse_and_report_line(capsys):
    x, y = torch.zeros(2, 3), torch.full((2, 3), 2.0)
    assert validation_mse(lambda t: t + 1, x, y) == 1.0
    report("demo", steps=4, t0=0.0, result="score 1.0", learned=True, each=True)
    out = capsys.readouterr().out
    assert out.startswith("demo: 4 steps each in ") and out.rstrip().endswith("s; score 1.0 -> learned=True")
