"""Process setup before training: distributed group, device, CPU threads, denormal flushing."""

from __future__ import annotations

import os

import torch

from emomoe import distributed


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def setup_runtime(num_threads: int = 0) -> torch.device:
    """Join torchrun's process group if launched by it, pick the device, and tune the CPU.

    `num_threads` 0 shares the cores among the processes of this node. Flushing denormals matters:
    without it, CPU training slows about 3x once small weights and gradients turn subnormal.
    """
    distributed.init_from_env()
    torch.set_flush_denormal(True)
    if num_threads == 0:
        num_threads = max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(num_threads)
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")
