"""Start and stop torch.distributed from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK).

    device = init_distributed()        # "cuda:<local_rank>" with NCCL, or "cpu" with gloo; no-op alone
    ... train_lm(model, ..., config=TrainConfig(device=device, ...))   # DDP inside when world > 1
    finish_distributed()
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def init_distributed(backend: str | None = None) -> str:
    """Initialise the process group when launched by torchrun (WORLD_SIZE > 1); return the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = f"cuda:{local}" if cuda else "cpu"
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return device


def finish_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
