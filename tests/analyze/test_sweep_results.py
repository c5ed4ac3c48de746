import math

import pytest

from emomoe.analyze.sweep_results import domains_of, for_method, increase, keeps_descending, mean_increase, methods_of


@pytest.fixture
def view(sweep_results):
    """The synthetic sweep's one method, read on its own."""
    return for_method(sweep_results, "layerwise")


def test_a_method_is_read_on_its_own(sweep_results):
    sweep_results["loss"]["reap"] = {"emo": {"1": {"code": 1.0}}}
    sweep_results["kept_experts"] = {"layerwise": {"emo": {"0.5": {}}}, "reap": {"emo": {"0.5": {"code": [[1]]}}}}
    assert methods_of(sweep_results) == ["layerwise", "reap"]
    reap = for_method(sweep_results, "reap")
    assert reap["loss"] == {"emo": {"1": {"code": 1.0}}} and reap["kept_experts"] == {"emo": {"0.5": {"code": [[1]]}}}
    assert reap["params"] is sweep_results["params"]


def test_keeps_are_sorted_largest_first(view):
    keeps = keeps_descending(view)
    assert [float(k) for k in keeps] == sorted((float(k) for k in keeps), reverse=True)
    assert keeps[0] == "1"


def test_mean_increase_is_the_unweighted_mean_over_domains(view):
    loss = view["loss"]["std"]
    expected = sum(loss["0.25"][d] - loss["1"][d] for d in loss["1"]) / len(loss["1"])
    assert math.isclose(mean_increase(view, "std", "0.25"), expected)
    assert domains_of(view) == list(loss["1"])


def test_missing_cells_are_nan_and_skipped_in_the_mean(view):
    del view["loss"]["emo"]["0.5"]["code"]
    assert math.isnan(increase(view, "emo", "0.5", "code"))
    loss = view["loss"]["emo"]
    expected = sum(loss["0.5"][d] - loss["1"][d] for d in ("legal", "math")) / 2
    assert math.isclose(mean_increase(view, "emo", "0.5"), expected)
