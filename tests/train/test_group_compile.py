"""A model group's step under torch.compile (GroupStep(compile=...): the forward and loss traced, the backward
through AOTAutograd) gives each member the losses and weights of the eager step. Traced on the CPU with the
aot_eager backend (dynamo's graph and AOTAutograd's joint graph, no code generation): what differs from eager
is the tracing, which is what can go wrong (the softmax vmap Function once lost gradients under dynamo)."""

from __future__ import annotations

import pytest
import torch

import attnzoo
from attnzoo.models import LanguageModel
from attnzoo.tasks import token_task
from attnzoo.train.group import GroupAdamW, GroupModel
from attnzoo.train.group_optim import clip_member_grads
from attnzoo.train.group_step import GroupStep


def members(mixer, n=2, d=32):
    kw = {mixer: dict(attnzoo.get_card(mixer).example_kwargs)}
    out = []
    for s in range(n):
        torch.manual_seed(s)
        out.append(LanguageModel(64, d, 2, mixer, mixer_kwargs=kw, mlp_ratio=0))
    return out


def run(mixer, compile, steps=3):
    torch.manual_seed(0)
    data = token_task("mqar", seq_len=32, num_train=64, num_test=8, seed=0, num_pairs=4, vocab_size=64)
    x, y = data.train
    group = GroupModel(members(mixer), "cpu")
    opt = GroupAdamW(group.flat, weight_decay=0.1)
    step = GroupStep(group, opt, x, y, batch_size=16, grad_clip=1.0, amp=None, device="cpu", compile=compile)
    lr = torch.tensor([1e-3, 3e-3], dtype=torch.float64)
    losses = [step.step(torch.arange(16) + 16 * i, lr) for i in range(steps)]
    return torch.stack(losses), {k: v.detach().clone() for k, v in group.params.items()}


# every mixer of the paper preset's grid (each ~3-6 s on the CPU)
@pytest.mark.parametrize("mixer", ["gla", "softmax", "mamba", "mamba2", "gated_deltanet", "deltanet", "based",
                                   "base_conv", "h3", "hyena", "rwkv6"])
def test_compiled_group_step_matches_eager(mixer):
    torch._dynamo.reset()
    want_loss, want_params = run(mixer, False)
    got_loss, got_params = run(mixer, "aot_eager")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # the losses and the update were traced
    assert torch.allclose(got_loss, want_loss, rtol=1e-5, atol=1e-6), (got_loss, want_loss)
    for k in want_params:
        assert torch.allclose(got_params[k], want_params[k], rtol=1e-4, atol=1e-6), k


def test_inductor_compiles_the_flat_update():
    """The clip + AdamW update compiled by inductor (real code generation, which aot_eager skips) gives the
    eager update's weights: an in-place clip once broke inductor's CPU codegen here (KeyError 'buf5')."""
    from attnzoo.train.group_optim import FlatParams

    def state(seed):
        torch.manual_seed(seed)
        fp = FlatParams({"w.weight": torch.randn(2, 6, 5), "norm.weight": torch.randn(2, 5)})
        return fp, GroupAdamW(fp, weight_decay=0.1)

    class Host:  # what GroupStep._eager_update reads
        def __init__(self, opt):
            self.grad_clip, self._clip, self.opt = 1.0, clip_member_grads, opt

    torch._dynamo.reset()
    (fa, oa), (fb, ob) = state(0), state(0)
    compiled = torch.compile(lambda g, lr: GroupStep._eager_update(Host(ob), g, lr, None), backend="inductor")
    lr = torch.tensor([1e-2, 3e-2], dtype=torch.float64)
    for i in range(3):
        torch.manual_seed(10 + i)
        g = torch.randn(2, 35) * torch.tensor([[0.01], [10.0]])     # one member clipped, one not
        GroupStep._eager_update(Host(oa), g.clone(), lr, None)
        compiled(g.clone(), lr)
    torch.testing.assert_close(fb.data, fa.data, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ob.v, oa.v, rtol=1e-5, atol=1e-9)
