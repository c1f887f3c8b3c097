"""The one-line machine description that every result record carries (zoo, repro, distill):
GPU, torch, Triton and CUDA versions on CUDA; the CPU, its threads and torch otherwise."""

from __future__ import annotations

import platform


def machine_line(device: str = "cpu") -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        try:
            import triton
            tv = triton.__version__
        except ImportError:
            tv = "none"
        return (f"{torch.cuda.get_device_name(torch.device(device))} · torch {torch.__version__} · Triton {tv} · "
                f"CUDA {torch.version.cuda}")
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu} ({torch.get_num_threads()} threads) · torch {torch.__version__}"
