"""Side-by-side timing for the bench scripts: variants alternate, so machine load hits them alike.

On a machine shared with other jobs the minimum of several repetitions is the least disturbed
estimate of a variant's own cost; ratios of minima measured in one process are what the benches
report. (A package rather than `bench/timing.py`, so `make bench` does not run it as a bench.)
"""

from __future__ import annotations

import time
from collections.abc import Callable


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of every repetition of every variant, run A, B, A, B, ... after `warmup` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(warmup + reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def interleaved_best(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, float]:
    """The fastest repetition of each variant (see `interleaved_times`)."""
    return {name: min(ts) for name, ts in interleaved_times(fns, reps, warmup).items()}
