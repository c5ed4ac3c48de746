import copy

from emomoe.analyze.sweep_results import for_method, mean_increase
from emomoe.experiments.sweep_tables import (
    advantage_line,
    equal_bytes_line,
    equal_bytes_table,
    params_table,
    subset_loss_table,
    summary_table,
)


def _rows(table):
    lines = table.splitlines()
    assert set(lines[1].replace("|", "").split()) == {"---"}
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def _layerwise(results):
    return for_method(results, "layerwise")


def _with_a_second_method(results, name="reap", scale=1.0):
    """`results` with a second method whose subsets lose `scale` times the first one's increases."""
    first = results["loss"]["layerwise"]
    results["loss"][name] = {
        model: {keep: {d: per_keep["1"][d] + scale * (v - per_keep["1"][d]) for d, v in losses.items()}
                for keep, losses in per_keep.items()}
        for model, per_keep in copy.deepcopy(first).items()
    }
    return results


def test_loss_table_has_a_row_per_method_model_and_keep(sweep_results):
    rows = _rows(subset_loss_table(_with_a_second_method(sweep_results)))
    assert len(rows) == 2 * 2 * 4
    emo_quarter = next(r for r in rows if r[:3] == ["layerwise", "emo", "0.25"])
    view = _layerwise(sweep_results)
    assert emo_quarter[-1] == f"{mean_increase(view, 'emo', '0.25'):+.3f}"
    assert emo_quarter[3].startswith(f"{view['loss']['emo']['0.25']['code']:.3f} (")
    assert [r[0] for r in rows].count("reap") == 8


def test_summary_table_reports_the_ratio_of_two_models(sweep_results):
    rows = _rows(summary_table(sweep_results))
    assert [r[:2] for r in rows] == [["layerwise", "0.5"], ["layerwise", "0.25"], ["layerwise", "0.125"]]
    view = _layerwise(sweep_results)
    ratio = mean_increase(view, "emo", "0.125") / mean_increase(view, "std", "0.125")
    assert rows[-1][4] == f"{ratio:.2f}"


def test_summary_table_puts_the_methods_side_by_side(sweep_results):
    rows = _rows(summary_table(_with_a_second_method(sweep_results, scale=2.0)))
    assert [r[0] for r in rows] == ["layerwise"] * 3 + ["reap"] * 3
    for first, second in zip(rows[:3], rows[3:]):
        assert first[1] == second[1]
        assert float(second[2]) == float(first[2]) * 2 or abs(float(second[2]) - 2 * float(first[2])) <= 0.0015
        assert second[4] == first[4]  # both models' increases doubled: the same ratio


def test_advantage_line_names_the_cells_where_the_first_model_loses_more(sweep_results):
    assert advantage_line(sweep_results) == (
        "emo's mean loss increase is below std's in 3 of 3 (method, keep) cells: under every method and keep fraction."
    )
    results = _with_a_second_method(sweep_results, name="random")
    results["loss"]["random"]["emo"]["0.5"] = {d: v + 5.0 for d, v in results["loss"]["random"]["emo"]["0.5"].items()}
    assert advantage_line(results) == (
        "emo's mean loss increase is below std's in 5 of 6 (method, keep) cells: not with random at 0.5."
    )
    del results["loss"]["layerwise"]["std"], results["loss"]["random"]["std"]
    assert advantage_line(results) == ""


def test_params_table_shares_are_relative_to_the_full_model(sweep_results):
    rows = _rows(params_table(sweep_results))
    full = sweep_results["params"]["emo"]["1"]["total"]
    half = sweep_results["params"]["emo"]["0.5"]["total"]
    row = next(r for r in rows if r[:2] == ["emo", "0.5"])
    assert row[2] == f"{half:,}" and row[4] == f"{half / full:.1%}"


def test_summary_table_spells_keep_as_routed_experts_and_the_papers_n(sweep_results):
    # 31 routed + 1 shared per layer, as in the demo: a quarter keeps 8 routed, N = 9 of 32.
    sizes = {"0.5": 16, "0.25": 8, "0.125": 4}
    sweep_results["experts"] = {m: {"routed": [31, 31], "shared": 1} for m in ("emo", "std")}
    sweep_results["kept_experts"] = {"layerwise": {
        m: {k: {d: [list(range(n)), list(range(n))] for d in ("code", "legal", "math")} for k, n in sizes.items()}
        for m in ("emo", "std")
    }}
    header, *_ = summary_table(sweep_results).splitlines()
    assert [c.strip() for c in header.strip("|").split("|")][:4] == ["method", "keep", "routed kept", "N (shared incl.)"]
    rows = _rows(summary_table(sweep_results))
    assert [r[1:4] for r in rows] == [
        ["0.5", "16 of 31", "17 of 32"], ["0.25", "8 of 31", "9 of 32"], ["0.125", "4 of 31", "5 of 32"]
    ]
    view = _layerwise(sweep_results)
    ratio = mean_increase(view, "emo", "0.25") / mean_increase(view, "std", "0.25")
    assert rows[1][6] == f"{ratio:.2f}"


def test_summary_table_compares_every_model_with_the_last(sweep_results):
    loss = sweep_results["loss"]["layerwise"]
    sweep_results["loss"]["layerwise"] = {"emo": loss["emo"], "anneal": loss["emo"], "std": loss["std"]}
    header, *_ = summary_table(sweep_results).splitlines()
    assert header.rstrip(" |").endswith("emo / std | anneal / std")
    rows = _rows(summary_table(sweep_results))
    view = _layerwise(sweep_results)
    ratio = mean_increase(view, "emo", "0.5") / mean_increase(view, "std", "0.5")
    assert rows[0][5] == rows[0][6] == f"{ratio:.2f}"


def test_no_ratio_when_the_denominator_prints_as_zero(sweep_results):
    for model, shift in (("emo", -0.00011), ("std", -0.00004)):  # both print as -0.000
        per_keep = sweep_results["loss"]["layerwise"][model]
        per_keep["0.5"] = {d: per_keep["1"][d] + shift for d in per_keep["1"]}
    rows = _rows(summary_table(sweep_results))
    assert rows[0][2:] == ["-0.000", "-0.000", "n/a"]


def _with_equal_bytes(results):
    """`results` with per-layer-count subsets at 0.25: 0.1 better than the uniform ones on every domain
    for emo, 0.2 worse for std; emo's keep 3 and 5 routed experts in its two layers, std's 4 and 4."""
    results["equal_bytes"] = {"layerwise": {
        model: {"0.25": {
            "bytes": 2_500_000,
            "loss": {d: v + delta for d, v in results["loss"]["layerwise"][model]["0.25"].items()},
            "kept_experts": {d: [list(range(a)), list(range(b))] for d in ("code", "legal", "math")},
        }}
        for model, delta, (a, b) in (("emo", -0.1, (3, 5)), ("std", 0.2, (4, 4)))
    }}
    return results


def test_equal_bytes_table_puts_the_two_subsets_of_the_same_bytes_side_by_side(sweep_results):
    results = _with_equal_bytes(sweep_results)
    rows = _rows(equal_bytes_table(results))
    view = _layerwise(results)
    emo, std = (mean_increase(view, m, "0.25") for m in ("emo", "std"))
    assert rows == [
        ["layerwise", "0.25", "emo", "2.50", f"{emo:+.3f}", f"{emo - 0.1:+.3f}", "-0.100", "3.0 / 5.0"],
        ["layerwise", "0.25", "std", "2.50", f"{std:+.3f}", f"{std + 0.2:+.3f}", "+0.200", "4.0 / 4.0"],
    ]
    assert equal_bytes_line(results) == (
        "Per-layer counts lose less than the same count in every layer in 1 of 2 (model, keep) cells: "
        "not with std at 0.25."
    )
