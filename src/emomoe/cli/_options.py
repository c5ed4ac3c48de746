"""A verb's options, generated from its config dataclass.

Every field becomes a flag named after it (`batch_size` -> `--batch-size`; a field of a section is
dotted: `--clusters.num-clusters`), documented by the field's docstring and the dataclass's
default, so a name, a default or a help text is written once, in the config. `--set KEY=VALUE`
sets any field by its dotted path and `--config FILE` reads them from YAML: flags win over the
file, and `--set` over both. The config parses and checks every value (against the field's range, if
it declares one, which --help shows), so a bad one is one error line naming the field, whichever way
it came in.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import types
import typing
from collections.abc import Iterator
from typing import Any, TypeVar

from emomoe.config import Config, Range, field_docs, field_range, parse_value

C = TypeVar("C", bound=Config)
_DEST = "config:"
"""Prefix of the generated flags' destinations, which keeps them apart from a verb's own arguments."""


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A field that holds a value (not a section), with its dotted path from the config's root."""

    path: str
    type: Any
    default: Any
    doc: str
    range: Range | None = None

    @property
    def flag(self) -> str:
        return "--" + self.path.replace("_", "-")


def leaves(cls: type[Config], default: Config | None = None, prefix: str = "") -> Iterator[Leaf]:
    """The fields of `cls` that hold values, sections walked depth first: a class's own fields
    before those it inherits (a verb's own options lead its --help), each in declaration order."""
    default = default if default is not None else cls()
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    for f in sorted(dataclasses.fields(cls), key=lambda f: _depth(cls, f.name)):
        if not f.init:
            continue
        tp, value = hints[f.name], getattr(default, f.name)
        if isinstance(tp, type) and issubclass(tp, Config):
            yield from leaves(tp, value, f"{prefix}{f.name}.")
        else:
            yield Leaf(prefix + f.name, tp, value, docs.get(f.name, ""), field_range(f))


def _depth(cls: type, name: str) -> int:
    """How far up the class hierarchy the field `name` is declared (0: in `cls` itself)."""
    return next(i for i, klass in enumerate(cls.__mro__) if name in vars(klass).get("__annotations__", {}))


def add_override_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup, example: str) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help=f"set any config field by its dotted path, e.g. {example} (repeatable)",
    )


def add_config_options(parser: argparse.ArgumentParser, cls: type[Config]) -> None:
    """`--config FILE`, `--set KEY=VALUE` and one flag per field of `cls`, in a group of their own."""
    fields = list(leaves(cls))
    group = parser.add_argument_group(
        "settings", f"The fields of {cls.__name__}, also settable with --set by their dotted names or in a\n"
        "--config file. Flags win over the file, and --set over both.",
    )
    group.add_argument("--config", metavar="FILE", help="a YAML file of these settings")
    example = next(leaf for leaf in fields if _shown(leaf.default) and not isinstance(leaf.default, list))
    add_override_arg(group, f"{example.path}={_shown(example.default).replace(' ', ',')}")
    add_field_flags(group, cls)


def add_field_flags(group: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type[Config]) -> None:
    """One flag per field of `cls` (a verb whose --config and --set mean something else: `plan`)."""
    for leaf in leaves(cls):
        group.add_argument(leaf.flag, dest=_DEST + leaf.path, default=argparse.SUPPRESS, help=_help(leaf),
                           **_kind(leaf))


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The config of `cls` from its defaults, `--config`, the flags given and `--set`, checked."""
    return cls.from_sources(args.config, values=field_values(cls, args), overrides=args.overrides)


def field_values(cls: type[Config], args: argparse.Namespace) -> dict[str, Any]:
    """The fields of `cls` given as flags (`add_field_flags`), by dotted path."""
    given = {name.removeprefix(_DEST): value for name, value in vars(args).items() if name.startswith(_DEST)}
    return {leaf.path: _value(given[leaf.path], leaf.type) for leaf in leaves(cls) if leaf.path in given}


def _parts(tp: Any) -> tuple[list[Any], bool]:
    """The types a value may have (None left out), and whether the field is a list of them."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) == 1:
            return _parts(options[0])
        return options, False
    if typing.get_origin(tp) in (list, tuple):
        return [typing.get_args(tp)[0]], True
    return [tp], False


def _kind(leaf: Leaf) -> dict[str, Any]:
    options, is_list = _parts(leaf.type)
    if options == [bool] and not is_list:
        return {"action": argparse.BooleanOptionalAction}
    return {"nargs": "+", "metavar": _metavar(leaf, options)} if is_list else {"metavar": _metavar(leaf, options)}


def _metavar(leaf: Leaf, options: list[Any]) -> str:
    if len(options) == 1 and isinstance(options[0], type) and issubclass(options[0], enum.Enum):
        return "{" + ",".join(str(m.value) for m in options[0]) + "}"
    if options in ([int], [float]):
        return "N" if options == [int] else "X"
    return leaf.path.rpartition(".")[2].upper()


def _value(given: Any, tp: Any) -> Any:
    """A flag's value for the config: text fields keep the text as typed (a stop string "#" is not
    a YAML comment); others read it as YAML, as `--set` does."""
    if isinstance(given, bool):
        return given
    options, _ = _parts(tp)
    if all(isinstance(t, type) and issubclass(t, str) for t in options):
        return given
    return [parse_value(v) for v in given] if isinstance(given, list) else parse_value(given)


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def _help(leaf: Leaf) -> str:
    notes = [f"default: {shown}"] if (shown := _shown(leaf.default)) else []
    notes += [str(leaf.range)] if leaf.range is not None else []
    text = f"{leaf.doc} ({'; '.join(notes)})" if notes else leaf.doc
    return text.replace("%", "%%")  # argparse formats help strings with %
