"""One training step of a model group (attnzoo.train.group), eager or replayed from a CUDA graph.

step(idx, lr) gathers the batch idx [B] from the training set (on the device), forms the logits at
the scored positions, backpropagates the members' summed losses, clips each member's gradients and
applies GroupAdamW with lr [G] (both once over the group's flat [G, P] buffer, group_optim.py); it
returns each member's mean cross-entropy [G] as a device tensor (no host synchronisation: the caller
reads it when it reports).

A task that scores the same number P of positions in every sequence (MQAR: its num_pairs queries)
has a static scored table (cols [N, P], targets [N, P]), so a step has static shapes and, on CUDA
with graph=True, is captured once as a CUDA graph after `warmup` eager steps and then replayed: a
tiny model's step is ~300-1000 kernel launches, whose host cost the replay removes. The captured
step is the same computation as the eager one (the same kernels on the same buffers); any failure to
capture (an op that synchronises with the host, say) falls back to eager steps and says why in
`graph_note`. Other tasks take the eager path, with the scored positions found per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attnzoo.train.group_optim import clip_member_grads
from attnzoo.train.trainer import IGNORE_INDEX, _autocast, at_least_float32


def scored_table(labels: torch.Tensor):
    """(cols [N, P], targets [N, P]) when every row of labels [N, T] scores the same P > 0 positions
    (in increasing order, as nonzero lists them); else None."""
    scored = labels != IGNORE_INDEX
    counts = scored.sum(1)
    P = int(counts[0]) if counts.numel() else 0
    if P == 0 or not bool((counts == P).all()):
        return None
    cols = scored.nonzero(as_tuple=True)[1].view(-1, P)
    return cols, labels.gather(1, cols)


class GroupStep:
    def __init__(self, group, opt, x_all, y_all, *, batch_size: int, grad_clip: float, amp, device,
                 graph: bool = False, warmup: int = 3, compile: bool | str = False):
        self.group, self.opt, self.x_all, self.y_all = group, opt, x_all, y_all
        # compile: the forward and loss (and through AOTAutograd the backward) under torch.compile, to fuse the
        # step's many small kernels; True = inductor, a string names another backend (the CPU tests' aot_eager)
        # (and the clip + AdamW update on the flat buffer: ~30 elementwise launches fused)
        traced = (lambda f: f) if not compile else (lambda f: torch.compile(
            f, backend="inductor" if compile is True else compile, dynamic=False))
        self._losses, self._update = traced(self._eager_losses), traced(self._eager_update)
        self.grad_clip, self.amp, self.device, self._clip = grad_clip, amp, torch.device(device), clip_member_grads
        self.table = scored_table(y_all)
        self.rows = torch.arange(batch_size, device=self.device)[:, None]
        self.want_graph = graph and self.device.type == "cuda" and self.table is not None
        self.warmup, self.graph, self.graph_note = warmup, None, None
        if graph and not self.want_graph:
            self.graph_note = ("CUDA graphs need a CUDA device" if self.device.type != "cuda"
                               else "CUDA graphs need the same number of scored positions in every sequence")
        self.eager_steps = 0

    def reset(self):
        """The group changed (a member left): a new graph is captured after `warmup` eager steps."""
        self.graph, self.eager_steps = None, 0

    def _compute(self, idx, lr):
        x = self.x_all[idx]
        if self.table is not None:
            cols = self.table[0][idx]
            rows = self.rows[: cols.shape[0]].expand_as(cols).reshape(-1)
            cols, target = cols.reshape(-1), self.table[1][idx].reshape(-1)
        else:
            rows, cols = (self.y_all[idx] != IGNORE_INDEX).nonzero(as_tuple=True)
            target = self.y_all[idx][rows, cols]
        mean, aux = self._losses(x, rows, cols, target, max(1, target.numel()))
        (mean + aux).sum().backward()         # members are independent: each gets its own gradient
        grad = self.group.flat.grad()         # [G, P]: clip and update run once over every parameter
        self.group.flat.clear_grads()
        self._update(grad, lr, self.group.flat.with_grad)
        return mean.detach()

    def _eager_update(self, grad, lr, where):
        if self.grad_clip:
            grad = self._clip(grad, self.grad_clip)
        self.opt.step(grad, lr, where)

    def _eager_losses(self, x, rows, cols, target, count: int):
        """Each member's mean cross-entropy at the scored positions [G], and its aux loss [G]."""
        G = self.group.size
        with _autocast(self.device, self.amp):
            logits, aux = self.group.scored_logits(x, rows, cols, training=True)
        ce = F.cross_entropy(at_least_float32(logits).flatten(0, 1), target.repeat(G), reduction="none")
        return ce.view(G, -1).sum(1) / count, aux

    def step(self, idx: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        if not self.want_graph:
            return self._compute(idx, lr)
        if self.graph is not None:
            self.static_idx.copy_(idx)
            self.static_lr.copy_(lr)
            self.graph.replay()
            return self.static_out.clone()
        if self.eager_steps < self.warmup:     # real steps, on a side stream (what capture needs first)
            self.eager_steps += 1
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                out = self._compute(idx, lr)
            torch.cuda.current_stream(self.device).wait_stream(side)
            return out
        return self._capture_and_run(idx, lr)

    def _capture_and_run(self, idx, lr):
        self.static_idx, self.static_lr = idx.clone(), lr.clone()
        snapshot = self._snapshot()
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.static_out = self._compute(self.static_idx, self.static_lr)
        except Exception as e:  # noqa: BLE001 -- an op that cannot be captured: run eagerly, say why
            self._restore(snapshot)
            self.want_graph = False
            self.graph_note = f"CUDA graph capture failed, eager steps instead: {type(e).__name__}: {e}"[:300]
            torch.cuda.synchronize(self.device)
            return self._compute(idx, lr)
        self.graph = graph
        graph.replay()                          # capture records the step; the replay runs it
        return self.static_out.clone()

    def _snapshot(self):
        """Capture does not run the step, but a failed capture may leave tensors half-written."""
        g, o = self.group, self.opt
        return (g.flat.data.clone(), {k: v.clone() for k, v in g.buffers.items()}, o.m.clone(), o.v.clone(),
                o.t.clone())

    def _restore(self, snap):
        params, buffers, m, v, t = snap
        with torch.no_grad():
            self.group.flat.data.copy_(params)
            self.group.flat.clear_grads()
            for k, b in self.group.buffers.items():
                b.copy_(buffers[k])
            self.opt.m.copy_(m)
            self.opt.v.copy_(v)
            self.opt.t.copy_(t)
