"""The `emomoe` command. Each verb lives in its own module in this package.

A verb module defines `register(subparsers)`, which adds its parser and sets `func(args) -> int`
as the default. Verbs only parse arguments and call library functions.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import signal
import sys
import threading
from collections.abc import Iterator

from emomoe import __version__
from emomoe.errors import EmomoeError
from emomoe.io import WRITE_ERRNOS, write_errno


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="emomoe",
        description="Pretrain EMO and standard MoE language models; select, slice and evaluate expert subsets.",
    )
    parser.add_argument("--version", action="version", version=f"emomoe {__version__}")
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}").register(subparsers)
    return parser


@contextlib.contextmanager
def _interrupt_after() -> Iterator[None]:
    """Hold a Ctrl-C that comes while the verb modules import torch until the imports are done.

    Raised inside torch's C++ import code, the KeyboardInterrupt aborts the process (pybind11
    calls std::terminate) instead of reaching `main`. A SIGINT the process ignores stays ignored.
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


def main(argv: list[str] | None = None) -> int:
    verb = "emomoe"
    try:
        with _interrupt_after():
            parser = build_parser()
        args = parser.parse_args(argv)
        verb = f"emomoe {args.verb}"
        return int(args.func(args) or 0)
    except EmomoeError as e:
        print(f"{verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{verb}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # A write the library did not wrap (a full disk, a read-only folder): still one line.
        number = write_errno(e)
        if number not in WRITE_ERRNOS:
            raise
        print(f"{verb}: error: {getattr(e, 'filename', None) or 'output'}: cannot write: {WRITE_ERRNOS[number]}",
              file=sys.stderr)
        return 2
