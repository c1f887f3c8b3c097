"""All-Scan: the affine scan of per-rank states across the ranks of a process group (ZeCO,
Chou et al. 2025, arXiv:2507.01004), and the two baselines it is measured against.

Rank p holds the affine map of its shard, S -> A_p S + B_p (S [B, H, K, V]; A_p is diagonal over K
for gated linear attention, `a` [B, H, K or 1, 1], or a dense K x K matrix for the delta rule,
[B, H, K, K]; a = None is the identity). The forward scan gives every rank its incoming state

    S_in^(0) = S_0,     S_out^(p) = A_p S_in^(p) + B_p,     S_in^(p+1) = S_out^(p),

and the reverse scan (the backward) runs the same recurrence from the last rank down with A_pᵀ:

    x^(P-1) = 0,        y^(p) = A_pᵀ x^(p) + C_p,           x^(p-1) = y^(p).

Schemes (`SPConfig.scheme`):
- "allscan" (ZeCO): the state is cut into `pieces` along V and pipelined: rank p forwards piece j as
  soon as it arrives and is combined, while piece j+1 is still on its way; each rank sends one state
  whatever P is. With overlap the scan runs while the caller computes its local outputs: on CUDA
  a side stream (NCCL waits are stream waits), the default; on CPU a thread, only when asked
  (overlap=True): measured on gloo, the thread waits for the GIL behind the local pass's Python
  loop (gated delta rule, P = 2: 121 ms per fwd+bwd with the thread, 88 without).
- "ring" (LASP-1 style): the same serial pass with the whole state as one message, not overlapped.
- "allgather" (LASP-2 style): every rank all-gathers every rank's (A_r, B_r) and folds its prefix;
  volume grows with P (the maps A_r travel too), latency is one collective.
"""

from __future__ import annotations

import threading

import torch

from attnzoo.parallel.comm import all_gather, defer, fail, flush_sends, post_recv, post_send, wait
from attnzoo.parallel.context import SequenceParallelError, SPConfig


def apply_map(a, x, *, dense: bool, transpose: bool = False):
    """A x for the map's linear part (a None: identity; diagonal: a * x; dense: A @ x or Aᵀ @ x)."""
    if a is None:
        return x
    if dense:
        return (a.transpose(-1, -2) if transpose else a) @ x
    return a * x


def _piece_sizes(V: int, pieces: int) -> list[int]:
    n = max(1, min(pieces, V))
    return [V // n + (1 if j < V % n else 0) for j in range(n)]


def pipeline_scan(cfg: SPConfig, a, b, first, *, dense: bool, reverse: bool, pieces: int, what: str):
    """The serial scan along the ranks, `pieces` messages per hop (the ring is pieces=1).

    Returns (incoming, outgoing) on this rank: forward (S_in, S_out), reverse (x, y)."""
    step = -1 if reverse else 1
    prev, nxt = cfg.rank - step, cfg.rank + step
    has_prev, has_next = 0 <= prev < cfg.world, 0 <= nxt < cfg.world
    flush_sends()  # the previous scans' sends: taken long ago
    sizes = _piece_sizes(b.shape[-1], pieces)
    b_parts = torch.split(b, sizes, -1)
    first_parts = None if first is None else torch.split(first.to(b.dtype), sizes, -1)
    bufs, recvs = [], []
    if has_prev:  # every piece's receive is posted at once; each is waited for when it is needed
        bufs = [torch.empty(*b.shape[:-1], n, dtype=b.dtype, device=b.device) for n in sizes]
        recvs = [post_recv(cfg, buf, prev, tag=j, what=f"{what}: receiving from rank {prev}")
                 for j, buf in enumerate(bufs)]
    ins, outs, sends = [], [], []
    for j, bj in enumerate(b_parts):
        if has_prev:
            wait([recvs[j]], cfg, f"{what}: piece {j + 1}/{len(sizes)} of the state from rank {prev}")
            x = bufs[j]
        else:
            x = torch.zeros_like(bj) if first_parts is None else first_parts[j]
        y = apply_map(a, x, dense=dense, transpose=reverse) + bj
        if has_next:
            sends.append(post_send(cfg, y, nxt, tag=j, what=f"{what}: sending to rank {nxt}"))
        ins.append(x)
        outs.append(y)
    defer(cfg, sends, f"{what}: sending the state to rank {nxt}")  # waited for at the next scan
    return torch.cat(ins, -1), torch.cat(outs, -1)


def _pack(*ts):
    return torch.cat([t.reshape(-1) for t in ts if t is not None])


def _unpack(flat, shapes):
    out, i = [], 0
    for s in shapes:
        n = int(torch.Size(s).numel())
        out.append(flat[i:i + n].view(s))
        i += n
    return out


def allgather_scan_forward(cfg: SPConfig, a, b, first, *, dense: bool, what: str):
    """LASP-2 style: gather every (A_r, B_r) (rank 0 sends B_0 + A_0 S_0), fold the prefix.
    Returns (S_in, S_out, the gathered maps for the reverse pass)."""
    b_eff = b if cfg.rank or first is None else apply_map(a, first.to(b.dtype), dense=dense) + b
    shapes = [b.shape] if a is None else [a.shape, b.shape]
    parts = [_unpack(m, shapes) for m in all_gather(cfg, _pack(a, b_eff), what)]
    maps = [None if a is None else p[0] for p in parts]
    S = torch.zeros_like(b) if cfg.rank or first is None else first.to(b.dtype)
    for r in range(cfg.rank):
        S = apply_map(maps[r], S, dense=dense) + parts[r][-1]
    return S, apply_map(a, S, dense=dense) + b, maps


def allgather_scan_reverse(cfg: SPConfig, a, c, maps, *, dense: bool, what: str):
    """The reverse fold from the gathered C_r and the maps kept from the forward. Returns (x, y)."""
    cs = all_gather(cfg, c, what)
    x = torch.zeros_like(c)
    for r in range(cfg.world - 1, cfg.rank, -1):
        x = apply_map(maps[r], x, dense=dense, transpose=True) + cs[r]
    return x, apply_map(a, x, dense=dense, transpose=True) + c


class ScanHandle:
    """Runs `fn()` now (overlap False), in a thread (CPU), or on a side CUDA stream; `wait()` returns
    its result once, re-raising what the scan raised."""

    def __init__(self, cfg: SPConfig, fn, *, overlap: bool, device: torch.device):
        self.cfg, self._result, self._error, self._thread, self._stream = cfg, None, None, None, None
        if not overlap or cfg.world == 1:
            self._result = fn()
        elif device.type == "cuda":
            self._stream = torch.cuda.Stream(device=device)
            self._stream.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(self._stream):
                self._result = fn()
        else:
            def run():
                try:
                    with torch.no_grad():
                        self._result = fn()
                except BaseException as e:  # handed to the caller by wait()
                    self._error = e

            self._thread = threading.Thread(target=run, name=f"allscan-rank{cfg.rank}", daemon=True)
            self._thread.start()

    def wait(self):
        if self._thread is not None:
            self._thread.join()
            if self._error is not None:
                if isinstance(self._error, SequenceParallelError):
                    raise self._error
                raise fail(self.cfg, "the scan", self._error) from self._error
        if self._stream is not None:
            main = torch.cuda.current_stream(self._stream.device)
            main.wait_stream(self._stream)
            for t in self._result:
                if isinstance(t, torch.Tensor):
                    t.record_stream(main)
        return self._result


def overlaps(cfg: SPConfig, device: torch.device, *, auto: bool = True) -> bool:
    """Whether a scan runs beside the caller's local pass: never for the ring (LASP-1) or a group of one;
    cfg.overlap None: on CUDA when `auto` (the op says the overlap pays), never on CPU."""
    if cfg.scheme == "ring" or cfg.world == 1:
        return False
    return (device.type == "cuda" and auto) if cfg.overlap is None else cfg.overlap


class AffineScan:
    """One op's scans: `forward(a, b, first)` -> handle of (S_in, S_out); `reverse(c)` -> handle of
    (x, y), reusing the maps (and, for allgather, the gathered maps) of the forward."""

    def __init__(self, cfg: SPConfig, *, dense: bool, what: str, overlap: bool = False):
        self.cfg, self.dense, self.what, self.overlap = cfg, dense, what, overlap
        self.a, self.maps = None, None

    def forward(self, a, b, first) -> ScanHandle:
        cfg, self.a = self.cfg, a
        if cfg.scheme == "allgather":
            def fn():
                S_in, S_out, self.maps = allgather_scan_forward(cfg, a, b, first, dense=self.dense, what=self.what)
                return S_in, S_out
        else:
            pieces = 1 if cfg.scheme == "ring" else cfg.pieces

            def fn():
                return pipeline_scan(cfg, a, b, first, dense=self.dense, reverse=False, pieces=pieces,
                                     what=self.what)
        return ScanHandle(cfg, fn, overlap=self.overlap, device=b.device)

    def reverse(self, c) -> ScanHandle:
        cfg, a = self.cfg, self.a
        if cfg.scheme == "allgather":
            def fn():
                return allgather_scan_reverse(cfg, a, c, self.maps, dense=self.dense, what=self.what + " (backward)")
        else:
            pieces = 1 if cfg.scheme == "ring" else cfg.pieces

            def fn():
                return pipeline_scan(cfg, a, c, None, dense=self.dense, reverse=True, pieces=pieces,
                                     what=self.what + " (backward)")
        return ScanHandle(cfg, fn, overlap=self.overlap, device=c.device)
