"""Side-by-side timing for the bench scripts: variants alternate, so machine load hits them alike.

On a machine shared with other jobs the minimum of several repetitions is the least disturbed
estimate of a variant's own cost; ratios of minima measured in one process are what the benches
report. (A package rather than `bench/timing.py`, so `make bench` does not run it as a bench.)

Every ratio a bench prints is named by `ratio`: `<a>_over_<b>_<unit>`, where a and b name the two
measurements and the unit says which way is better. `tokens_per_s`: a throughput ratio, above 1
when a is faster. `seconds`: a time ratio, above 1 when a is slower.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from emomoe import kernels


def interleaved_times(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of every repetition of every variant, run A, B, C, then C, B, A, ... after
    `warmup` rounds. The order turns every round: a variant that runs right after another pays for
    what that one left behind (evicted caches, a cold thread pool; measured: the same 3 ms op took
    6 ms after a 100 ms one), and no variant should always be the one that pays."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for rep in range(warmup + reps):
        for name, fn in (fns.items() if rep % 2 == 0 else reversed(fns.items())):
            start = time.perf_counter()
            fn()
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def interleaved_best(fns: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, float]:
    """The fastest repetition of each variant (see `interleaved_times`)."""
    return {name: min(ts) for name, ts in interleaved_times(fns, reps, warmup).items()}


TOKENS_PER_S = "tokens_per_s"
SECONDS = "seconds"


def ratio(values: Mapping[str, float], a: str, b: str, unit: str) -> dict[str, float]:
    """`{"<a>_over_<b>_<unit>": values[a] / values[b]}` to 3 decimals; `values` hold `unit`s,
    `TOKENS_PER_S` (above 1: a faster) or `SECONDS` (above 1: a slower)."""
    if unit not in (TOKENS_PER_S, SECONDS):
        raise ValueError(f"unit: expected {TOKENS_PER_S!r} or {SECONDS!r}, got {unit!r}")
    return {f"{a}_over_{b}_{unit}": round(values[a] / values[b], 3)}


def kernels_off(fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` with emomoe's fused CPU kernels off: the PyTorch twins that GPUs, other dtypes and
    machines without a compiler run, for timing beside the kernels."""

    def run():
        with kernels.disabled():
            return fn()

    return run
