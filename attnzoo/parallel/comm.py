"""Point-to-point and collective steps on torch.distributed, with timeouts, clear errors and a count of
the bytes each rank sends (the bench reads `STATS`).

- `wait(works, cfg, what)`: wait for async works; a peer that does not answer within cfg.timeout
  (gloo), or a failed transport, raises SequenceParallelError naming this rank and the step;
- `post_send` / `post_recv`: isend / irecv to group ranks (tensors made contiguous);
- `defer(sends)` / `flush_sends()`: a send is not waited for where it is posted: gloo completes it only
  once the receiver has posted its receive, so waiting would make a rank idle until its successor
  catches up (measured: 5-13 ms per 64 KiB scan at P = 2, against 0.5 ms once deferred); the pending
  sends are waited for at the next scan, by when the receiver has long taken them;
- `exchange`: sends and receives posted together (batch_isend_irecv); the receives waited;
- `all_gather(cfg, t)`: every rank's t, as a list in rank order;
- `shift(t, offset, cfg)`: differentiable — rank r gets rank r - offset's t (zeros where none);
- `gather_sequence(t, lengths, cfg)`: differentiable all-gather along dim 1 of shards of unequal length.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from attnzoo.parallel.context import SequenceParallelError, SPConfig

STATS = {"bytes_sent": 0, "messages": 0}
_PENDING: list = []  # (cfg, work, tensor, what) of sends posted and not yet waited for


def reset_stats():
    STATS["bytes_sent"] = 0
    STATS["messages"] = 0


def count_sent(t: torch.Tensor, copies: int = 1):
    STATS["bytes_sent"] += t.numel() * t.element_size() * copies
    STATS["messages"] += copies


def fail(cfg: SPConfig, what: str, err: BaseException) -> SequenceParallelError:
    return SequenceParallelError(
        f"sequence parallel, rank {cfg.rank} of {cfg.world}: {what} failed or did not arrive within "
        f"{cfg.timeout:g} s; a peer raised, left, or is not running the same sequence-parallel op "
        f"({type(err).__name__}: {str(err).strip()[:300]})"
    )


def wait(works, cfg: SPConfig, what: str):
    timeout = datetime.timedelta(seconds=cfg.timeout)
    try:
        for w in works:
            if w is None:
                continue
            if cfg.blocking_waits:
                if w.wait(timeout) is False:
                    raise TimeoutError("wait returned False")
            else:
                w.wait()
    except SequenceParallelError:
        raise
    except Exception as e:  # gloo raises RuntimeError on a timeout or a closed connection
        raise fail(cfg, what, e) from e


def post_send(cfg: SPConfig, t: torch.Tensor, to: int, tag: int = 0, what: str = "send"):
    t = t.contiguous()
    count_sent(t)
    try:
        return dist.isend(t, cfg.peer(to), group=cfg.group, tag=tag), t
    except Exception as e:  # a peer that already left: the transport refuses at once
        raise fail(cfg, what, e) from e


def post_recv(cfg: SPConfig, t: torch.Tensor, frm: int, tag: int = 0, what: str = "receive"):
    try:
        return dist.irecv(t, cfg.peer(frm), group=cfg.group, tag=tag)
    except Exception as e:
        raise fail(cfg, what, e) from e


def defer(cfg: SPConfig, sends, what: str):
    """Keep posted sends [(work, tensor)] (the tensor alive) until the next `flush_sends`."""
    _PENDING.extend((cfg, w, t, what) for w, t in sends)


def flush_sends():
    """Wait for every deferred send (raises SequenceParallelError if a peer never took one)."""
    while _PENDING:
        cfg, w, _, what = _PENDING.pop(0)
        wait([w], cfg, what)


def exchange(cfg: SPConfig, sends, recvs, what: str):
    """sends: [(tensor, to_rank)], recvs: [(buffer, from_rank)]; posted together, the receives waited
    (the sends deferred)."""
    flush_sends()
    ops, keep = [], []
    for t, to in sends:
        t = t.contiguous()
        keep.append(t)
        count_sent(t)
        ops.append(dist.P2POp(dist.isend, t, cfg.peer(to), cfg.group))
    for buf, frm in recvs:
        ops.append(dist.P2POp(dist.irecv, buf, cfg.peer(frm), cfg.group))
    if ops:
        try:
            works = dist.batch_isend_irecv(ops)
        except Exception as e:
            raise fail(cfg, what, e) from e
        if cfg.backend == "nccl":  # one coalesced work for the whole batch
            wait(works, cfg, what)
        else:
            wait(works[len(sends):], cfg, what)
            defer(cfg, zip(works[:len(sends)], keep), what + ": sending")


def all_gather(cfg: SPConfig, t: torch.Tensor, what: str) -> list[torch.Tensor]:
    """Every rank's t (same shape on every rank), in rank order. Counted as a ring all-gather:
    each rank sends its tensor world - 1 times."""
    t = t.contiguous()
    if cfg.world == 1:
        return [t]
    out = [torch.empty_like(t) for _ in range(cfg.world)]
    count_sent(t, cfg.world - 1)
    try:
        work = dist.all_gather(out, t, group=cfg.group, async_op=True)
    except Exception as e:
        raise fail(cfg, what, e) from e
    wait([work], cfg, what)
    return out


def all_reduce_sum(cfg: SPConfig, t: torch.Tensor, what: str) -> torch.Tensor:
    t = t.contiguous()
    if cfg.world == 1:
        return t
    count_sent(t, 2 * (cfg.world - 1))  # ring all-reduce: 2 (P - 1) / P of the tensor, P times
    try:
        work = dist.all_reduce(t, group=cfg.group, async_op=True)
    except Exception as e:
        raise fail(cfg, what, e) from e
    wait([work], cfg, what)
    return t


def _shift_plain(t: torch.Tensor, offset: int, cfg: SPConfig, what: str) -> torch.Tensor:
    out = torch.zeros_like(t)
    sends = [(t, cfg.rank + offset)] if 0 <= cfg.rank + offset < cfg.world else []
    recvs = [(out, cfg.rank - offset)] if 0 <= cfg.rank - offset < cfg.world else []
    exchange(cfg, sends, recvs, what)
    return out


class _Shift(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, offset, cfg, what):
        ctx.offset, ctx.cfg, ctx.what = offset, cfg, what
        return _shift_plain(t, offset, cfg, what)

    @staticmethod
    def backward(ctx, grad):
        return _shift_plain(grad, -ctx.offset, ctx.cfg, ctx.what + " (backward)"), None, None, None


def shift(t: torch.Tensor, offset: int, cfg: SPConfig, what: str = "shift") -> torch.Tensor:
    """Rank r receives rank (r - offset)'s t (zeros when there is none); differentiable (the gradient
    travels back the other way). Every rank of the group must call it."""
    if cfg.world == 1:
        return torch.zeros_like(t) if offset else t
    if torch.is_grad_enabled() and t.requires_grad:
        return _Shift.apply(t, offset, cfg, what)
    return _shift_plain(t, offset, cfg, what)


def shard_lengths(cfg: SPConfig, T: int, device) -> list[int]:
    """Every rank's number of time steps (they may differ)."""
    n = torch.tensor([T], dtype=torch.long, device=device)
    return [int(x) for x in all_gather(cfg, n, "shard lengths")]


def _gather_seq_plain(t, lengths, cfg, what):
    Lmax = max(lengths)
    pad = t.new_zeros(t.shape[0], Lmax - t.shape[1], *t.shape[2:])
    parts = all_gather(cfg, torch.cat([t, pad], 1), what)
    return torch.cat([p[:, :n] for p, n in zip(parts, lengths)], 1)


class _GatherSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t, lengths, cfg, what):
        ctx.lengths, ctx.cfg, ctx.what = lengths, cfg, what
        return _gather_seq_plain(t, lengths, cfg, what)

    @staticmethod
    def backward(ctx, grad):
        lengths, cfg = ctx.lengths, ctx.cfg
        Lmax = max(lengths)
        parts = torch.split(grad, lengths, 1)
        stacked = torch.stack([torch.cat([p, p.new_zeros(p.shape[0], Lmax - p.shape[1], *p.shape[2:])], 1)
                               for p in parts])
        # the gradient of a shard is the sum of what every rank's use of it contributed
        total = all_reduce_sum(cfg, stacked, ctx.what + " (backward)")
        return total[cfg.rank][:, : lengths[cfg.rank]], None, None, None


def gather_sequence(t: torch.Tensor, lengths: list[int], cfg: SPConfig, what: str = "all-gather") -> torch.Tensor:
    """t [B, T_r, ...] on rank r -> [B, sum(lengths), ...] on every rank, in rank order; differentiable."""
    if cfg.world == 1:
        return t
    if torch.is_grad_enabled() and t.requires_grad:
        return _GatherSequence.apply(t, lengths, cfg, what)
    return _gather_seq_plain(t, lengths, cfg, what)
