"""The `emomoe` command. Each verb lives in its own module in this package.

A verb module defines `register(subparsers)`, which adds its parser and sets `func(args) -> int`
as the default. Verbs only parse arguments and call library functions.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import re
import sys
from pathlib import Path

from emomoe import __version__
from emomoe.errors import EmomoeError
from emomoe.interrupts import held_interrupt
from emomoe.io import WRITE_ERRNOS, write_errno


def verbs() -> dict[str, str]:
    """Verb -> the module that defines it (`lm-eval` in `lm_eval.py`), found without importing it."""
    modules = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return {name.replace("_", "-"): name for name in modules}


def _summary(module: str) -> str:
    """What a verb does: its module docstring's first line, read without importing the module
    (a verb module imports torch, seconds of work that `emomoe --help` does not need)."""
    docstring = ast.get_docstring(ast.parse(Path(__path__[0], f"{module}.py").read_text(encoding="utf-8")))
    return re.sub(r"^(`[^`]+`(, | and )?)+: ", "", docstring.splitlines()[0])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `emomoe` parser. With `only`, only that verb's module is imported and registered; the
    other verbs are listed by their summary, so that `emomoe --help` and `--version` (only="")
    and every verb import nothing they do not need."""
    parser = argparse.ArgumentParser(
        prog="emomoe",
        description="Pretrain EMO and standard MoE language models; select, slice and evaluate expert subsets.",
    )
    parser.add_argument("--version", action="version", version=f"emomoe {__version__}")
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module in verbs().items():
        if only is None or verb == only:
            importlib.import_module(f"{__name__}.{module}").register(subparsers)
        else:
            subparsers.add_parser(verb, help=_summary(module))
    return parser


def main(argv: list[str] | None = None) -> int:
    verb = "emomoe"
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((arg for arg in argv if not arg.startswith("-")), "")
    try:
        with held_interrupt():  # the verb modules import more of torch
            parser = build_parser(only=chosen if chosen in verbs() else "")
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
