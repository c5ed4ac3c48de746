"""How long the rest of a job will take: its stages' reference times, rescaled by the speed measured so far.

A job lists its stages with the seconds each takes on a reference machine (`Stage.reference_s`).
Before any stage has run, the estimate is the sum of those times. Once a stage has done work, the
job's speed is measured: reference seconds done per second spent, over the stages finished so far,
and the rest of the job is estimated at that speed, so a slower (or busier) machine, or a bigger
model than the reference times were measured on, shows up from the first stage on. One short stage
says little about the next ones (a tokenizer's speed is not a training step's), so the reference
counts as `prior_s` seconds of work done at its own speed: a short first stage moves the estimate a
little, the long ones decide it. A stage that reused earlier results, wholly or in part, says how
much of its work it did (`finish(done=...)`): work skipped is neither counted as fast work nor left
in the estimate.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable

PRIOR_S = 60.0
"""How many seconds of work at the reference's speed the reference timings weigh as."""


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    reference_s: float
    """Seconds the stage takes on the reference machine."""


class Eta:
    """The time left of a job of `stages`, run in order: `start` each, `finish` the last one."""

    def __init__(
        self, stages: Iterable[Stage], clock: Callable[[], float] = time.monotonic, prior_s: float = PRIOR_S
    ):
        self.left = {stage.name: stage.reference_s for stage in stages}
        """Reference seconds of the stages not finished yet, in order."""
        self.clock, self.prior_s = clock, prior_s
        self.current: str | None = None
        self.started = 0.0
        self.spent_s = 0.0
        """Seconds the finished stages' work took."""
        self.reference_done_s = 0.0
        """What the same work takes on the reference machine."""

    def start(self, name: str) -> str:
        """Stage `name` begins (the one before it, if any, finished all its work): what is left, said in words."""
        if self.current is not None:
            self.finish()
        if name not in self.left:
            raise ValueError(f"{name}: not a stage of this job, or started twice")
        self.current, self.started = name, self.clock()
        return self.describe()

    def finish(self, done: float = 1.0) -> None:
        """The current stage ends, having done `done` of its work (0: it reused earlier results)."""
        if self.current is None:
            raise ValueError("no stage has started")
        reference_s = self.left.pop(self.current)
        if done > 0:
            self.spent_s += self.clock() - self.started
            self.reference_done_s += done * reference_s
        self.current = None

    @property
    def speed(self) -> float | None:
        """Reference seconds of work done per second spent (the prior's included), once some work has been timed."""
        if self.reference_done_s <= 0 or self.spent_s <= 0:
            return None
        return (self.reference_done_s + self.prior_s) / (self.spent_s + self.prior_s)

    def seconds_left(self) -> float:
        """The stages not finished (the current one whole), at the measured speed, or at the reference's."""
        return sum(self.left.values()) / (self.speed or 1.0)

    def describe(self) -> str:
        basis = "at the speed so far" if self.speed is not None else "from the reference timings"
        return f"job: {_duration(self.seconds_left())} left, {basis}"


def _duration(seconds: float) -> str:
    if seconds < 60:
        return "under a minute"
    return f"about {round(seconds / 60)} min"
