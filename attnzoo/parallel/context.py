"""The sequence-parallel configuration: which process group, which scheme, how long to wait.

    cfg = SPConfig.make(group, scheme="allscan", pieces=4, overlap=None, timeout=60.0)
    cfg.rank, cfg.world          # this process's place along the sequence (rank r holds shard r)
    cfg.peer(r)                  # the global rank of group rank r (what torch.distributed p2p wants)

A group of one process (or `group=None` without an initialised process group) is valid: the
sequence-parallel ops then reduce to the single-device op, which the tests use to check the algebra.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist

SCHEMES = ("allscan", "ring", "allgather")  # ZeCO All-Scan; LASP-1 serial ring; LASP-2 all-gather


class SequenceParallelError(RuntimeError):
    """A peer did not answer within the timeout, or a collective failed (a rank raised, left, or is
    running other sequence-parallel ops than this one)."""


@dataclass(frozen=True)
class SPConfig:
    group: object | None
    rank: int
    world: int
    scheme: str = "allscan"
    pieces: int = 4
    overlap: bool | None = None  # None: overlap where it pays (a side stream on CUDA; not on CPU)
    timeout: float = 60.0
    backend: str = "none"

    @classmethod
    def make(cls, group=None, *, scheme="allscan", pieces=4, overlap=None, timeout=60.0) -> SPConfig:
        if scheme not in SCHEMES:
            raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
        if not isinstance(pieces, int) or isinstance(pieces, bool) or pieces < 1:
            raise ValueError(f"pieces must be an int >= 1, got {pieces!r}")
        if overlap not in (None, True, False):
            raise ValueError(f"overlap must be None (auto), True or False, got {overlap!r}")
        if not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if group is None and not (dist.is_available() and dist.is_initialized()):
            return cls(None, 0, 1, scheme, pieces, overlap, float(timeout), "none")
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("a process group was given but torch.distributed is not initialised")
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        if rank < 0:
            raise ValueError("this process is not a member of the given process group")
        backend = str(dist.get_backend(group)).lower()
        return cls(group, rank, world, scheme, pieces, overlap, float(timeout), backend)

    def peer(self, r: int) -> int:
        """Global rank of group rank r."""
        if self.group is None:
            return r
        return dist.get_global_rank(self.group, r)

    @property
    def blocking_waits(self) -> bool:
        """True where Work.wait blocks the CPU and takes a timeout (gloo); NCCL waits on streams and
        relies on the process group's own timeout (set it in init_process_group)."""
        return self.backend != "nccl"
