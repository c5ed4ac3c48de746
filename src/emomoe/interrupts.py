"""A Ctrl-C during the seconds torch takes to import: held until the imports end, then raised; and
SIGTERM turned into a Ctrl-C where a run must stop cleanly."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def held_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C that comes during the block until the block ends, then raise KeyboardInterrupt.

    Raised inside torch's C++ import code, a KeyboardInterrupt either aborts the process (pybind11
    calls std::terminate) or is swallowed by torch's NumPy initialisation, which leaves numpy half
    imported for the rest of the process (`module 'numpy' has no attribute 'intp'` later). A
    SIGINT the process ignores or handles itself, or a block outside the main thread, is left alone.
    """
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    pending: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Raise KeyboardInterrupt in the block on SIGTERM (a scheduler, `docker stop`, `kill`), as on
    Ctrl-C, so that the block's cleanup runs instead of the process dying where it stands. Outside
    the main thread, where no handler can be installed, SIGTERM is left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
