import math

from emomoe.analyze.sweep_results import domains_of, increase, keeps_descending, mean_increase


def test_keeps_are_sorted_largest_first(sweep_results):
    keeps = keeps_descending(sweep_results)
    assert [float(k) for k in keeps] == sorted((float(k) for k in keeps), reverse=True)
    assert keeps[0] == "1"


def test_mean_increase_is_the_unweighted_mean_over_domains(sweep_results):
    loss = sweep_results["loss"]["std"]
    expected = sum(loss["0.25"][d] - loss["1"][d] for d in loss["1"]) / len(loss["1"])
    assert math.isclose(mean_increase(sweep_results, "std", "0.25"), expected)
    assert domains_of(sweep_results) == list(loss["1"])


def test_missing_cells_are_nan_and_skipped_in_the_mean(sweep_results):
    del sweep_results["loss"]["emo"]["0.5"]["code"]
    assert math.isnan(increase(sweep_results, "emo", "0.5", "code"))
    loss = sweep_results["loss"]["emo"]
    expected = sum(loss["0.5"][d] - loss["1"][d] for d in ("legal", "math")) / 2
    assert math.isclose(mean_increase(sweep_results, "emo", "0.5"), expected)
