import os
import subprocess
import sys

import pytest
import torch

from emomoe.train import runtime
from emomoe.train.runtime import RETAIN_MEMORY_ENV, busy_cpu_seconds, threads_for_free_cores

# Allocate, free and allocate again a 64 MB tensor; print the fewest page faults of six
# allocations after the first. Retained memory is not reused by every allocation: on the
# development machine (2026-12-01) glibc placed every second 64 MB block in fresh heap pages that
# fault in again, so the test asserts reuse in steady state, while opting out faults every time.
# The process imports what `emomoe train` imports first: with only torch in the heap, glibc served
# the block from fresh pages on every allocation in about one run of three (2026-12-07), a heap
# layout a training process does not have.
_REFAULTS = """
import resource, torch
import emomoe.train.trainer
from emomoe.train.runtime import retain_freed_memory
print(retain_freed_memory())
def touch():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
touch()
print(min(touch() for _ in range(6)))
"""


def _refaults(retain: str) -> tuple[bool, int]:
    env = {**os.environ, RETAIN_MEMORY_ENV: retain, "THP_MEM_ALLOC_ENABLE": "0"}
    out = subprocess.run([sys.executable, "-c", _REFAULTS], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator setting")
def test_retained_memory_is_reused_without_page_faults():
    applied, faults = _refaults("1")
    assert applied and faults < 100  # 64 MB is 16k pages of 4 kB when faulted in again
    opted_out, faults_default = _refaults("0")
    assert not opted_out and faults_default > 10_000


def test_busy_cpu_seconds_counts_all_but_idle_and_iowait(tmp_path):
    stat = tmp_path / "stat"
    #                    user nice system idle iowait irq softirq steal guest guest_nice
    stat.write_text("cpu  100 20 30 5000 70 1 2 7 0 0\ncpu0 50 10 15 2500 35 0 1 3 0 0\n")
    hz = os.sysconf("SC_CLK_TCK")
    assert busy_cpu_seconds(stat) == pytest.approx((100 + 20 + 30 + 1 + 2 + 7) / hz)
    assert busy_cpu_seconds(tmp_path / "missing") is None


@pytest.mark.parametrize(
    "cores, others_busy, threads",
    [(2, 0.0, 2), (2, 0.3, 2), (2, 0.67, 1), (2, 1.0, 1), (2, 3.5, 1), (8, 1.0, 7), (8, 2.6, 5)],
)
def test_threads_for_free_cores(cores, others_busy, threads):
    assert threads_for_free_cores(cores, others_busy) == threads


class _Clock:
    """Stands in for time.perf_counter / process_time and the machine's busy ticks."""

    def __init__(self, stat):
        self.stat, self.wall, self.own, self.busy_ticks = stat, 0.0, 0.0, 0
        self.write()

    def write(self):
        self.stat.write_text(f"cpu  {self.busy_ticks} 0 0 1000 0 0 0 0 0 0\n")

    def advance(self, seconds, own_cores, other_cores):
        hz = os.sysconf("SC_CLK_TCK")
        self.wall += seconds
        self.own += seconds * own_cores
        self.busy_ticks += round(seconds * (own_cores + other_cores) * hz)
        self.write()


def test_adaptive_threads_follow_the_load_of_other_processes(tmp_path, monkeypatch):
    clock = _Clock(tmp_path / "stat")
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: clock.wall)
    monkeypatch.setattr(runtime.time, "process_time", lambda: clock.own)
    governor = runtime.AdaptiveThreads(cores=2, interval_s=1.0, stat_file=clock.stat)
    assert governor.threads == torch.get_num_threads() == 2

    clock.advance(0.5, own_cores=1.3, other_cores=0.7)  # too soon to decide
    assert governor.update() == 2
    clock.advance(1.5, own_cores=1.3, other_cores=0.7)  # a busy process squeezed by our two threads
    assert governor.update() == torch.get_num_threads() == 1
    clock.advance(2.0, own_cores=1.0, other_cores=1.0)  # it now gets its whole core
    assert governor.update() == 1
    clock.advance(2.0, own_cores=1.0, other_cores=0.05)  # it stopped
    assert governor.update() == torch.get_num_threads() == 2


def test_fixed_thread_counts_and_launchers_do_not_adapt(monkeypatch):
    assert runtime.thread_governor(3) is None
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert runtime.thread_governor(0) is None
