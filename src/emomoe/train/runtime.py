"""Process setup before training: distributed group, device, CPU threads, denormal flushing, allocator;
and the process's resident memory, for the benches that measure it."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from pathlib import Path

import torch

from emomoe import distributed

RETAIN_MEMORY_ENV = "EMOMOE_RETAIN_MEMORY"
# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_INT_MAX = 2**31 - 1


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_cpu_seconds(stat_file: Path = Path("/proc/stat")) -> float | None:
    """CPU-seconds all processes have used on this machine since boot, or None where unknown.

    Busy is everything but idle and iowait; `steal` (time the hypervisor gave to other guests)
    counts as busy too, because those cores were not ours to use.
    """
    try:
        fields = stat_file.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def threads_for_free_cores(cores: int, others_busy: float) -> int:
    """Threads to run when other processes keep `others_busy` cores busy: one per core they leave
    free, counting a core as free when at least half of it is (and never fewer than one thread).

    More threads than free cores is the expensive mistake on a CPU: every parallel region ends in
    a barrier, and a barrier waits for the thread the scheduler parked behind another process.
    """
    return max(1, min(cores, int(cores - others_busy + 0.5)))


class AdaptiveThreads:
    """Keeps torch's thread count at the cores other processes leave free, as the load changes.

    Call `update()` once per training step; at most every `interval_s` seconds it compares the
    machine's busy CPU time (/proc/stat) with this process's own, attributes the rest to other
    processes, and sets `torch.set_num_threads` accordingly. While this process runs more
    threads than it gets cores, the others get less than they ask for, so their load reads low;
    the rounding in `threads_for_free_cores` still drops a thread when one busy process shares
    two cores with two threads (it reads as 2/3 of a core).
    """

    def __init__(self, cores: int, interval_s: float = 1.0, stat_file: Path = Path("/proc/stat")):
        self.cores, self.interval_s, self.stat_file = cores, interval_s, stat_file
        self.threads = cores
        self._last = self._sample()
        torch.set_num_threads(self.threads)

    def _sample(self) -> tuple[float, float, float | None]:
        return time.perf_counter(), time.process_time(), busy_cpu_seconds(self.stat_file)

    def update(self) -> int:
        now = self._sample()
        wall = now[0] - self._last[0]
        if wall < self.interval_s or now[2] is None or self._last[2] is None:
            return self.threads
        others_busy = max(0.0, (now[2] - self._last[2]) - (now[1] - self._last[1])) / wall
        self._last = now
        threads = threads_for_free_cores(self.cores, others_busy)
        if threads != self.threads:
            self.threads = threads
            torch.set_num_threads(threads)
        return self.threads


def retain_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the kernel.

    By default glibc serves every large block (a CPU activation, a gradient) with a fresh `mmap`
    and unmaps it on free, so each training step faults all its activations in again, and the
    kernel zeroes every page: measured here, 15-25% of a CPU training step. Served from the heap
    and never trimmed, the same memory is reused from the second step on. The cost is that the
    process keeps its peak footprint (plus some fragmentation) until it exits, which suits a
    training process; set EMOMOE_RETAIN_MEMORY=0 to opt out. Returns whether the setting applies
    (glibc only).
    """
    if os.environ.get(RETAIN_MEMORY_ENV, "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _INT_MAX))


def resident_bytes(peak: bool = False) -> int:
    """This process's resident memory (VmRSS), or with `peak` its high-water mark since the last
    `reset_peak_resident` (VmHWM). Linux only."""
    field = "VmHWM" if peak else "VmRSS"
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_resident() -> None:
    """Start the high-water mark over from the current resident memory (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def thread_governor(num_threads: int) -> AdaptiveThreads | None:
    """The adaptive thread count for `num_threads` 0 in a single CPU process; None when fixed.

    With several processes per node (torchrun), each keeps its static share of the cores: their
    own load would read as other processes' load.
    """
    if num_threads != 0 or torch.cuda.is_available() or int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        return None
    if busy_cpu_seconds() is None:
        return None
    return AdaptiveThreads(available_cores())


def setup_runtime(num_threads: int = 0, retain_memory: bool = False) -> torch.device:
    """Join torchrun's process group if launched by it, pick the device, and tune the CPU.

    `num_threads` 0 shares the cores among the processes of this node (a training loop can adapt
    it further with `thread_governor`). Flushing denormals matters: without it, CPU training
    slows about 3x once small weights and gradients turn subnormal. `retain_memory` applies
    `retain_freed_memory` (for training loops on the CPU).
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
    if retain_memory:
        retain_freed_memory()
    return torch.device("cpu")
