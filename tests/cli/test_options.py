"""Options generated from config dataclasses (emomoe/cli/_options.py), and every verb that uses them."""

import argparse
import dataclasses
import enum

import pytest

from emomoe.cli._options import add_config_options, config_from_args
from emomoe.config import Config
from emomoe.errors import ConfigError


class Shade(enum.StrEnum):
    LIGHT = "light"
    """Pale."""
    DARK = "dark"
    """Deep."""


@dataclasses.dataclass
class Inner(Config):
    num_rounds: int = 3
    """Rounds per go."""


@dataclasses.dataclass
class Toy(Config):
    rate: float = 0.5
    """How fast, 10% of the way per step."""
    label: str | None = None
    """A name; None means none."""
    loud: bool = False
    """Shout."""
    shade: Shade = Shade.LIGHT
    """Which shade."""
    words: list[str] = dataclasses.field(default_factory=lambda: ["a", "b"])
    """Words to say."""
    inner: Inner = dataclasses.field(default_factory=Inner)

    def validate(self) -> None:
        if self.rate <= 0:
            raise ConfigError(f"rate: expected > 0, got {self.rate}")


def _toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    add_config_options(parser, Toy)
    return parser


def _toy(*argv: str) -> Toy:
    return config_from_args(Toy, _toy_parser().parse_args(list(argv)))


def test_every_field_is_a_flag_named_after_it_with_its_docstring_and_default():
    text = " ".join(_toy_parser().format_help().split())
    assert "--rate X How fast, 10% of the way per step. (default: 0.5)" in text
    assert "--label LABEL A name; None means none." in text
    assert "--loud, --no-loud Shout. (default: off)" in text
    assert "--shade {light,dark} Which shade. (default: light)" in text
    assert "--words WORDS [WORDS ...] Words to say. (default: a b)" in text
    assert "--inner.num-rounds N Rounds per go. (default: 3)" in text


def test_no_flags_give_the_dataclass_defaults():
    assert _toy() == Toy()


def test_flags_are_parsed_by_the_field_type():
    toy = _toy("--rate", "2e-3", "--label", "#1", "--loud", "--shade", "dark", "--words", "x", "null",
               "--inner.num-rounds", "7")
    # Text stays as typed: "#1" is not a YAML comment, and "null" is a word.
    assert toy == Toy(rate=2e-3, label="#1", loud=True, shade=Shade.DARK, words=["x", "null"], inner=Inner(7))
    assert _toy("--loud", "--no-loud").loud is False


def test_a_file_then_the_flags_then_set(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text("rate: 4.0\nlabel: from-file\ninner: {num_rounds: 9}\n")
    toy = _toy("--config", str(path), "--rate", "3", "--set", "rate=2", "--set", "inner.num_rounds=1")
    assert (toy.rate, toy.label, toy.inner.num_rounds) == (2.0, "from-file", 1)


@pytest.mark.parametrize("argv, field", [
    (["--rate", "0"], "rate"),
    (["--inner.num-rounds", "many"], "inner.num_rounds"),
    (["--shade", "grey"], "shade"),
    (["--set", "inner.num_rounds=1.5"], "inner.num_rounds"),
])
def test_a_bad_value_names_the_field(argv, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        _toy(*argv)
