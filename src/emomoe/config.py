"""Nested dataclass configs: YAML in and out, dotted overrides, validation that names the field.

Every config in emomoe is a dataclass deriving from `Config`. Loading is strict: an unknown key or
a value of the wrong type raises `ConfigError` naming the dotted path of the field, so a typo in a
YAML file or in `--set model.router.pool=4..31` never passes silently.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import functools
import inspect
import math
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from emomoe.errors import ConfigError, DataError
from emomoe.io import atomic_write_text, read_text

C = TypeVar("C", bound="Config")
RANGE = "emomoe.range"
"""The key of a field's `Range` in its dataclass metadata (see `ranged`)."""


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number field may take (every number, for a list of them); None is unbounded."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    """The bound itself is outside: > low rather than >= low."""
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


def ranged(
    default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
    le: float | None = None, lt: float | None = None, default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A config field whose value (None aside) must lie in a range, e.g. `lr: float = ranged(4e-3, gt=0)`.

    Every way a config is made checks it, with one message naming the field, the value and the
    range: YAML files, `--set`, the flags generated from the field, `Config.replace`; `--help`
    shows it beside the default.
    """
    if (ge is not None and gt is not None) or (le is not None and lt is not None):
        raise TypeError("ranged: give one lower bound (ge or gt) and one upper bound (le or lt)")
    bounds = Range(ge if gt is None else gt, le if lt is None else lt, gt is not None, lt is not None)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={RANGE: bounds})


def field_range(f: dataclasses.Field) -> Range | None:
    return f.metadata.get(RANGE)


class DuplicateKey(yaml.YAMLError):
    """A mapping gives one key twice: YAML keeps the last and drops the first without a word."""

    def __init__(self, key: Any, line: int, first_line: int):
        super().__init__(f"line {line}: key '{key}' given twice (first on line {first_line}); give each key once")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false. YAML 1.1 would read `pool: off` as false. A key given
    twice in one mapping (two `train:` sections) is an error."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKey(key, key_node.start_mark.line + 1, seen[key] + 1)
                seen[key] = key_node.start_mark.line
            except TypeError:  # an unhashable key: the base class reports it
                continue
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str):
    """Parse YAML text as emomoe reads every config and override value."""
    return yaml.load(text, Loader=_Loader)


@dataclasses.dataclass
class Config:
    """Base for every config dataclass. A field's range is declared with it (`ranged`); what else
    its values must satisfy (choices, fields that depend on each other) a subclass checks in `validate()`."""

    def validate(self) -> None:
        """Check values beyond their ranges; raise ConfigError naming the field. Called after every
        load, once the ranges hold."""

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], path: str = "") -> C:
        """Build and validate; every problem found (unknown keys, wrong types, invalid values in any
        section) is reported at once, in one ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        where = f"{path}." if path else ""
        problems = [
            f"unknown config key '{where}{key}' (valid keys: {', '.join(sorted(fields))})"
            for key in sorted(set(data) - set(fields))
        ]
        kwargs = {}
        for name, value in data.items():
            if name in fields:
                try:
                    kwargs[name] = _coerce(value, hints[name], _join(path, name))
                except ConfigError as e:
                    problems.append(str(e))
        if problems:
            raise ConfigError("; ".join(problems))
        obj = cls(**kwargs)
        _validate_tree(obj, path)
        return obj

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, overrides: list[str] | None = None) -> C:
        """Load a YAML file with dotted `overrides` applied before anything is checked, so that an
        override can repair a file that would fail on its own."""
        return cls.from_sources(path, overrides=overrides or [])

    @classmethod
    def from_sources(
        cls: type[C], path: str | Path | None = None, *, values: dict[str, Any] | None = None,
        overrides: list[str] | None = None,
    ) -> C:
        """The defaults, then the YAML file at `path`, then `values` (dotted key -> value, e.g. from
        command-line flags), then dotted `key=value` overrides; checked once, at the end, so that a
        later source can repair an earlier one. Errors name the file, if there is one."""
        data = read_yaml_mapping(path) if path is not None else {}
        try:
            if values or overrides:
                data = deep_merge(cls().to_dict(), cls.expand(data))
                for key, value in (values or {}).items():
                    _set(data, key, value, f"{key}={value}")
                apply_overrides(data, overrides or [])
            return cls.from_dict(data)
        except ConfigError as e:
            if path is None:
                raise
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def expand(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook: turn shorthands in raw YAML (e.g. a model preset) into plain fields."""
        return data

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            atomic_write_text(Path(path), text)
        return text

    def check(self) -> None:
        """Check this config and its sections as a load does (ranges, then `validate()`): for a
        config built in code."""
        _validate_all(self, "")

    def replace(self: C, **fields: Any) -> C:
        """A checked copy with `fields` set: the keyword form of a library call that takes this
        config, e.g. `finetune_subset(subset, store, out, lr=1e-3)`."""
        copy = dataclasses.replace(self, **fields)
        _validate_all(copy, "")
        return copy

    def with_overrides(self: C, overrides: list[str]) -> C:
        """Return a copy with dotted `key=value` overrides applied (values parsed as YAML scalars)."""
        return type(self).from_dict(apply_overrides(self.to_dict(), overrides))


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal below the field), on one line; a class's
    own docstrings win over those of its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted `key=value` overrides in a config tree (in place; returned for chaining)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.max_steps=200")
        _set(data, key, parse_value(raw), item)
    return data


def parse_value(raw: str) -> Any:
    """A value typed on the command line, read as a YAML scalar (`4e-3`, `true`, `[1, 2]`); text
    that is not valid YAML stays as it is."""
    try:
        return load_yaml(raw) if raw else ""
    except yaml.YAMLError:
        return raw


def _set(data: dict[str, Any], key: str, value: Any, item: str) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{'.'.join(parts[: i + 1])}' is not a config section")
        node = child
    if parts[-1] not in node:
        raise ConfigError(f"unknown config key '{key}' in override '{item}'")
    node[parts[-1]] = value


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; a missing, unreadable or non-mapping file is a
    ConfigError naming it."""
    path = Path(path)
    try:
        data = load_yaml(read_text(path, "config file")) or {}
    except DataError as e:
        raise ConfigError(str(e)) from None
    except DuplicateKey as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in, section by section."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _range_problems(obj: Config) -> list[str]:
    """One line per field of `obj` (not its sections) whose value is outside its `ranged` range."""
    problems = []
    for f in dataclasses.fields(obj):
        bounds, value = field_range(f), getattr(obj, f.name)
        if bounds is None or value is None:
            continue
        is_list = isinstance(value, (list, tuple))
        if not all(v in bounds for v in (value if is_list else [value])):
            integers = int in _number_types(typing.get_type_hints(type(obj))[f.name])
            kind = ("integers" if integers else "numbers") if is_list else ("an integer" if integers else "a number")
            problems.append(f"{f.name}: expected {kind} {bounds}, got {value}")
    return problems


def _number_types(tp: Any) -> set[Any]:
    """The types a field's numbers have: `int | None` and `list[int]` hold ints."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType, list, tuple):
        return set().union(*(_number_types(arg) for arg in typing.get_args(tp)))
    return {tp}


def _validate_tree(obj: Config, path: str) -> None:
    """The ranges of `obj`'s fields, then its own `validate()` (which may rely on them); errors get
    the section's `path`."""
    try:
        problems = _range_problems(obj)
        if problems:
            raise ConfigError("; ".join(problems))
        obj.validate()
    except ConfigError as e:
        # A validate() may report several problems, "; "-separated: each gets the section's path.
        parts = [f"{path}.{msg}" if path and not msg.startswith(path) else msg for msg in str(e).split("; ")]
        raise ConfigError("; ".join(parts)) from None


def _validate_all(obj: Config, path: str) -> None:
    """Validate `obj` and every section in it (from_dict validates each section as it builds it)."""
    for f in dataclasses.fields(obj):
        if isinstance(value := getattr(obj, f.name), Config):
            _validate_all(value, _join(path, f.name))
    _validate_tree(obj, path)


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert a YAML value to the annotated type, or raise ConfigError naming `path`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        items = [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        _, val_tp = typing.get_args(tp) or (Any, Any)
        return {k: _coerce(v, val_tp, f"{path}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if isinstance(tp, type) and issubclass(tp, Config):
        return tp.from_dict(value if value is not None else {}, path)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in tp)
            raise ConfigError(f"{path}: '{value}' is not one of {choices}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML reads "4e-3" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None or not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        # Numbers are accepted for string fields such as `pool: 32` next to `pool: 4..31`, or
        # `keep: 0.25` next to `keep: 8,8,4,4`.
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported config type {_type_name(tp)}")
