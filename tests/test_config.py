import dataclasses
import enum

import pytest
from hypothesis import given
from hypothesis import strategies as st

from emomoe.config import Config, Range, field_docs, ranged
from emomoe.errors import ConfigError


class Color(enum.StrEnum):
    RED = "red"
    """The colour of a stop sign."""
    BLUE = "blue"
    """The colour of the sky."""


@dataclasses.dataclass
class Inner(Config):
    size: int = 3
    rate: float = 0.1
    pool: str = "off"
    layers: list[int] | None = None

    def validate(self) -> None:
        if self.size < 1:
            raise ConfigError(f"size: must be >= 1, got {self.size}")


@dataclasses.dataclass
class Outer(Config):
    name: str = "x"
    flag: bool = False
    color: Color = Color.RED
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_round_trip_through_yaml(tmp_path):
    cfg = Outer(name="run", flag=True, color=Color.BLUE, inner=Inner(size=7, rate=2e-3, layers=[1, 2]))
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert Outer.from_yaml(path) == cfg


def test_unknown_key_names_dotted_path():
    with pytest.raises(ConfigError, match=r"inner\.sise"):
        Outer.from_dict({"inner": {"sise": 3}})


@pytest.mark.parametrize(
    "data, field",
    [
        ({"inner": {"size": "three"}}, "inner.size"),
        ({"flag": "yes"}, "flag"),
        ({"color": "green"}, "color"),
        ({"inner": {"layers": [1, "a"]}}, r"inner\.layers\[1\]"),
        ({"inner": {"rate": "fast"}}, "inner.rate"),
    ],
)
def test_wrong_type_names_field(data, field):
    with pytest.raises(ConfigError, match=field):
        Outer.from_dict(data)


def test_validate_runs_on_nested_configs_and_names_field():
    with pytest.raises(ConfigError, match=r"inner\.size"):
        Outer.from_dict({"inner": {"size": 0}})


def test_overrides_parse_yaml_scalars():
    cfg = Outer().with_overrides(["inner.size=12", "inner.rate=4e-3", "inner.pool=4..31", "flag=true", "color=blue"])
    assert cfg.inner.size == 12 and cfg.inner.rate == pytest.approx(4e-3)
    assert cfg.inner.pool == "4..31" and cfg.flag is True and cfg.color is Color.BLUE
    assert Outer().with_overrides(["inner.pool=32"]).inner.pool == "32"


@pytest.mark.parametrize("bad", ["inner.missing=1", "nokey", "name.sub=1", "=3"])
def test_bad_overrides_are_rejected(bad):
    with pytest.raises(ConfigError):
        Outer().with_overrides([bad])


@given(size=st.integers(1, 10**6), rate=st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_override_then_dump_is_identity(size, rate):
    cfg = Outer().with_overrides([f"inner.size={size}", f"inner.rate={rate!r}"])
    assert Outer.from_dict(cfg.to_dict()) == cfg
    assert cfg.inner.size == size and cfg.inner.rate == pytest.approx(rate)


def test_invalid_yaml_file_names_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        Outer.from_yaml(path)
    with pytest.raises(ConfigError, match="not found"):
        Outer.from_yaml(tmp_path / "absent.yaml")


def test_a_key_given_twice_is_refused_naming_the_line(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("inner:\n  size: 2\nname: a\ninner:\n  size: 5\n")  # YAML alone keeps size 5, silently
    with pytest.raises(ConfigError, match=r"twice\.yaml: line 4: key 'inner' given twice \(first on line 1\); "
                                          "give each key once$"):
        Outer.from_yaml(path)
    path.write_text("inner: {size: 2, size: 3}\n")
    with pytest.raises(ConfigError, match="line 1: key 'size' given twice"):
        Outer.from_yaml(path)


def test_a_binary_or_empty_config_file_is_one_error(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ConfigError, match=r"bin\.yaml: not a config file: byte 128 is not UTF-8 text"):
        Outer.from_yaml(path)
    path.write_text("")
    assert Outer.from_yaml(path) == Outer()


def test_yaml_reads_on_off_yes_no_as_strings(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: off\nflag: true\ninner: {pool: off}\n")
    cfg = Outer.from_yaml(path)
    assert cfg.name == "off" and cfg.inner.pool == "off" and cfg.flag is True
    assert Outer().with_overrides(["inner.pool=off", "name=no"]).name == "no"


def test_sources_apply_in_order_file_values_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: file\ninner: {size: 5, rate: 0.5}\n")
    cfg = Outer.from_sources(path, values={"inner.size": 6, "name": "value"}, overrides=["inner.size=7"])
    assert (cfg.name, cfg.inner.size, cfg.inner.rate) == ("value", 7, 0.5)
    assert Outer.from_sources() == Outer()
    with pytest.raises(ConfigError, match=r"^inner\.size: must be >= 1"):  # no file: nothing to name
        Outer.from_sources(values={"inner.size": 0})
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown config key 'nope'"):
        Outer.from_sources(path, overrides=["nope=1"])


def test_replace_checks_the_copy_and_its_sections():
    assert Outer().replace(name="y", inner=Inner(size=2)) == Outer(name="y", inner=Inner(size=2))
    with pytest.raises(ConfigError, match=r"^inner\.size"):
        Outer().replace(inner=Inner(size=0))


def test_field_docs_are_the_strings_below_the_fields_inherited_ones_too():
    @dataclasses.dataclass
    class Base(Config):
        a: int = 1
        """The first
        one."""
        b: int = 2

    @dataclasses.dataclass
    class Derived(Base):
        c: str = "x"
        """The third."""

    assert field_docs(Derived) == {"a": "The first one.", "c": "The third."}


def test_a_number_is_text_for_a_string_field():
    assert Inner.from_dict({"pool": 0.25}).pool == "0.25" and Inner.from_dict({"pool": 32}).pool == "32"


@pytest.mark.parametrize(
    "bounds, inside, outside, spelled",
    [
        (Range(low=0), [0, 3.5], [-1e-9], ">= 0"),
        (Range(low=0, low_open=True), [1e-9], [0, -1], "> 0"),
        (Range(high=1, high_open=True), [0.999, -5], [1, 2], "< 1"),
        (Range(low=0, high=1, high_open=True), [0, 0.5], [1, -0.1], "in [0, 1)"),
        (Range(low=0, high=1, low_open=True), [1, 1e-9], [0, 1.5], "in (0, 1]"),
    ],
)
def test_a_range_holds_what_it_says(bounds, inside, outside, spelled):
    assert all(v in bounds for v in inside) and not any(v in bounds for v in outside)
    assert str(bounds) == spelled


@dataclasses.dataclass
class Bounded(Config):
    steps: int = ranged(10, ge=1)
    rate: float = ranged(0.5, gt=0, le=1)
    limit: int | None = ranged(None, ge=0)
    lengths: list[int] = ranged(default_factory=lambda: [16, 32], ge=1)


@dataclasses.dataclass
class Holder(Config):
    bounded: Bounded = dataclasses.field(default_factory=Bounded)


def test_declared_ranges_are_checked_on_load_naming_the_field_the_value_and_the_range():
    assert Holder.from_dict({"bounded": {"steps": 1, "rate": 1, "limit": None, "lengths": [1]}}).bounded.rate == 1.0
    with pytest.raises(ConfigError, match=r"^bounded\.steps: expected an integer >= 1, got 0$"):
        Holder.from_dict({"bounded": {"steps": 0}})
    with pytest.raises(ConfigError, match=r"^bounded\.lengths: expected integers >= 1, got \[16, 0\]$"):
        Holder.from_dict({"bounded": {"lengths": [16, 0]}})
    # Every problem at once, in the order of the fields.
    with pytest.raises(
        ConfigError, match=r"^bounded\.rate: expected a number in \(0, 1\], got 1\.5; bounded\.limit: expected an "
        r"integer >= 0, got -1$",
    ):
        Holder().with_overrides(["bounded.limit=-1", "bounded.rate=1.5"])


def test_configs_built_in_code_are_checked_by_replace_and_check():
    with pytest.raises(ConfigError, match=r"^steps: expected an integer >= 1, got -4$"):
        Bounded().replace(steps=-4)
    with pytest.raises(ConfigError, match=r"^bounded\.rate: expected a number in \(0, 1\], got 0$"):
        Holder(bounded=Bounded(rate=0)).check()


def test_a_range_has_one_bound_each_side():
    with pytest.raises(TypeError, match="one lower bound"):
        ranged(1, ge=0, gt=0)
