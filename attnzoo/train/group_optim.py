"""A model group's parameters as one flat buffer, and the per-member AdamW and clipping that update it.

    fp = FlatParams(stacked)            # stacked: {name: [G, ...]} (torch.func.stack_module_state)
    fp.params                           # {name: [G, ...]} leaves, views of fp.data [G, P]
    g = fp.grad()                       # [G, P]: the params' .grad concatenated (one copy)
    g = clip_member_grads(g, 1.0)       # each member's gradient scaled by its own global norm
    GroupAdamW(fp, weight_decay=0.1).step(g, lr, fp.with_grad)        # lr [G]; then fp.clear_grads()

Why flat: a group's update per tensor cost ~12 elementwise launches per parameter tensor (a 2-layer
softmax LM has 12 tensors, GLA 26), about half of a whole graphed d=64 training step's ~500 launches
(counted on the CPU profiler, 2026-12-07). On one [G, P] buffer the clip and the update are ~30 launches
whatever the model, with the same elementwise arithmetic as torch.optim.AdamW and
torch.nn.utils.clip_grad_norm_ per member (tests/train/test_group.py: a member equals its model trained
alone).
"""

from __future__ import annotations

import math

import torch

from attnzoo.train.lamb import decays
from attnzoo.train.trainer import at_least_float32


class FlatParams:
    """G members' parameters as views of one [G, P] buffer `data` (every tensor of one dtype and device).

    params[name] is a leaf tensor [G, *shape] that shares data's storage, so an in-place update of data
    (the optimizer's) is an update of every parameter; autograd fills each leaf's own .grad as usual."""

    def __init__(self, stacked: dict):
        if not stacked:
            raise ValueError("a flat parameter buffer needs at least one tensor")
        first = next(iter(stacked.values()))
        kinds = {(v.dtype, v.device) for v in stacked.values()}
        if len(kinds) > 1:
            raise ValueError(f"every parameter of a group must have one dtype and device, got "
                             f"{sorted(map(str, kinds))}")
        self.G = first.shape[0]
        if any(v.dim() == 0 or v.shape[0] != self.G for v in stacked.values()):
            raise ValueError("every stacked parameter needs the same leading member dim")
        self.names = list(stacked)
        self.shapes = [tuple(stacked[k].shape[1:]) for k in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        data = torch.cat([stacked[k].detach().reshape(self.G, -1) for k in self.names], 1)
        self._adopt(data)
        self._missing, self.with_grad = frozenset(), None

    def _adopt(self, data: torch.Tensor):
        self.data = data
        self.params, off = {}, 0
        for k, shape, n in zip(self.names, self.shapes, self.sizes):
            self.params[k] = data[:, off:off + n].view(self.G, *shape).detach().requires_grad_(True)
            off += n

    def keep(self, members: torch.Tensor):
        """Keep only `members` (indices into the current group); new leaves, new storage."""
        self.G = int(members.numel())
        self._adopt(self.data[members])       # (indexing copies)

    def grad(self) -> torch.Tensor:
        """The gradients [G, P] (zeros where a parameter got none), in data's layout. Sets self.with_grad:
        None when every parameter has a gradient, else [P] bool, True on those that have one (what
        torch.optim skips: a parameter without a gradient is not updated, GroupAdamW.step's `where`)."""
        missing = frozenset(k for k, p in self.params.items() if p.grad is None)
        if missing != self._missing:            # the mask is built once per set of missing gradients
            self._missing = missing
            self.with_grad = self.mask(lambda k, _: k not in missing) if missing else None
        return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(self.G, -1)
                          for p in self.params.values()], 1)

    def clear_grads(self):
        for p in self.params.values():
            p.grad = None

    def mask(self, keep) -> torch.Tensor:
        """[P] bool: True on the entries of the parameters for which keep(name, shape) holds."""
        return torch.cat([torch.full((n,), bool(keep(k, s)), device=self.data.device)
                          for k, s, n in zip(self.names, self.shapes, self.sizes)])


def clip_member_grads(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """grad [G, P] scaled per member as torch.nn.utils.clip_grad_norm_ would scale that model's gradients
    (a new tensor: scaling the input in place broke inductor's CPU code generation in torch 2.13 when the
    update is compiled after it, `KeyError: 'buf5'`)."""
    sq = at_least_float32(grad).pow(2).sum(1)
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp_max(1.0)
    return grad * coef[:, None].to(grad.dtype)


class GroupAdamW:
    """torch.optim.AdamW's update (not fused, not amsgrad) on a FlatParams buffer, a learning rate per
    member; weight decay on the tensors build_optimizer decays. The step count is a device tensor, so that
    a step can be captured in a CUDA graph (group_step.py). It is one count for all parameters, where
    torch.optim counts each parameter's own steps: the two differ only for a parameter that gets a
    gradient at some steps and none at others (one that never gets one stays untouched in both)."""

    def __init__(self, fp: FlatParams, *, weight_decay: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.fp, self.betas, self.eps, self.wd = fp, betas, eps, weight_decay
        # [1, P]: build_optimizer's rule (lamb.decays) on each member's tensor
        self.decay = fp.mask(lambda name, shape: decays(name, len(shape)))[None] if weight_decay else None
        self.m, self.v = torch.zeros_like(fp.data), torch.zeros_like(fp.data)
        self.t = torch.zeros((), dtype=torch.float64, device=fp.data.device)
        self._one = torch.ones((), dtype=fp.data.dtype, device=fp.data.device)

    def keep(self, members):
        self.m, self.v = self.m[members], self.v[members]

    @torch.no_grad()
    def step(self, grad: torch.Tensor, lr: torch.Tensor, where: torch.Tensor | None = None):
        """grad [G, P] (fp.grad(), clipped); lr [G] (this step's, schedule applied); where [P] bool: update
        only these entries (fp.with_grad: torch.optim leaves a parameter without a gradient untouched)."""
        p = self.fp.data
        if where is not None:
            before = (p.clone(), self.m.clone(), self.v.clone())
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2_sqrt = 1 - b1 ** self.t, (1 - b2 ** self.t).sqrt()
        lr_b = lr.view(-1, 1).to(torch.float64)
        if self.decay is not None:      # (1 - lr wd) on the decayed entries, exactly 1 elsewhere
            p.mul_(torch.where(self.decay, (1 - lr_b * self.wd).to(p.dtype), self._one))
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v.sqrt() / bc2_sqrt.to(p.dtype)).add_(self.eps)
        p.sub_((lr_b / bc1).to(p.dtype) * self.m / denom)
        if where is not None:
            for x, old in zip((p, self.m, self.v), before):
                x.copy_(torch.where(where, x, old))
