import pytest
from hypothesis import given
from hypothesis import strategies as st

from emomoe.errors import ConfigError
from emomoe.select.keep import KeepSpec


def test_spellings():
    assert KeepSpec.parse("8") == KeepSpec(count=8)
    assert KeepSpec.parse("0.25") == KeepSpec(fraction=0.25)
    assert KeepSpec.parse("1.0") == KeepSpec(fraction=1.0)
    assert KeepSpec.parse("8, 8,4,4") == KeepSpec(per_layer=(8, 8, 4, 4))


@given(st.floats(0.001, 1.0), st.lists(st.integers(1, 200), min_size=1, max_size=6))
def test_fraction_rounds_to_nearest_and_keeps_at_least_one(fraction, routed):
    counts = KeepSpec.of_fraction(fraction).resolve(routed)
    for keep, have in zip(counts, routed):
        assert 1 <= keep <= have
        assert keep == 1 or abs(keep - fraction * have) <= 0.5


def test_per_layer_counts_pass_through():
    assert KeepSpec.parse("3,1").resolve([4, 4]) == [3, 1]


@pytest.mark.parametrize(
    "text, match",
    [("0", "at least 1"), ("9", "only 8 routed"), ("2,2,2", "3 per-layer counts"), ("1,0", "at least 1")],
)
def test_bad_counts_name_the_problem(text, match):
    with pytest.raises(ConfigError, match=match):
        KeepSpec.parse(text).resolve([8, 8])


@pytest.mark.parametrize("text", ["1.5", "0.0", "-0.1", "abc", "8,x"])
def test_bad_spellings(text):
    with pytest.raises(ConfigError, match="keep"):
        KeepSpec.parse(text)


def test_labels_round_trip():
    for text in ["0.25", "8", "4,2"]:
        assert KeepSpec.parse(KeepSpec.parse(text).label()) == KeepSpec.parse(text)
