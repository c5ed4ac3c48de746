"""Turn Ctrl-C (SIGINT) and SIGTERM into a request to stop at the next step boundary.

Stopping mid-step would leave the data loader ahead of the weights, and the checkpoint written on
the way out could not resume bitwise. A second Ctrl-C stops at once, without a checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequest:
    """Context manager that records stop signals instead of raising; `.requested` says whether one came."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopRequest:
        # Signal handlers can only be installed from the main thread; elsewhere stops are not caught.
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
