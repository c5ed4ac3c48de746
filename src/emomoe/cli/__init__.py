"""The `emomoe` command. Each verb lives in its own module in this package.

A verb module defines `register(subparsers)`, which adds its parser and sets `func(args) -> int`
as the default. Verbs only parse arguments and call library functions.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from emomoe import __version__
from emomoe.errors import EmomoeError
from emomoe.interrupts import held_interrupt
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


def main(argv: list[str] | None = None) -> int:
    verb = "emomoe"
    try:
        with held_interrupt():  # the verb modules import more of torch
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
