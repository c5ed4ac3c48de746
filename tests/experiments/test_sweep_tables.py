from emomoe.analyze.sweep_results import mean_increase
from emomoe.experiments.sweep_tables import params_table, subset_loss_table, summary_table


def _rows(table):
    lines = table.splitlines()
    assert set(lines[1].replace("|", "").split()) == {"---"}
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]


def test_loss_table_has_a_row_per_model_and_keep(sweep_results):
    rows = _rows(subset_loss_table(sweep_results))
    assert len(rows) == 2 * 4
    emo_quarter = next(r for r in rows if r[:2] == ["emo", "0.25"])
    assert emo_quarter[-1] == f"{mean_increase(sweep_results, 'emo', '0.25'):+.3f}"
    assert emo_quarter[2].startswith(f"{sweep_results['loss']['emo']['0.25']['code']:.3f} (")


def test_summary_table_reports_the_ratio_of_two_models(sweep_results):
    rows = _rows(summary_table(sweep_results))
    assert [r[0] for r in rows] == ["0.5", "0.25", "0.125"]
    ratio = mean_increase(sweep_results, "emo", "0.125") / mean_increase(sweep_results, "std", "0.125")
    assert rows[-1][3] == f"{ratio:.2f}"


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
    sweep_results["kept_experts"] = {
        m: {k: {d: [list(range(n)), list(range(n))] for d in ("code", "legal", "math")} for k, n in sizes.items()}
        for m in ("emo", "std")
    }
    header, *_ = summary_table(sweep_results).splitlines()
    assert [c.strip() for c in header.strip("|").split("|")][:3] == ["keep", "routed kept", "N (shared incl.)"]
    rows = _rows(summary_table(sweep_results))
    assert [r[:3] for r in rows] == [["0.5", "16 of 31", "17 of 32"], ["0.25", "8 of 31", "9 of 32"], ["0.125", "4 of 31", "5 of 32"]]
    ratio = mean_increase(sweep_results, "emo", "0.25") / mean_increase(sweep_results, "std", "0.25")
    assert rows[1][5] == f"{ratio:.2f}"


def test_summary_table_compares_every_model_with_the_last(sweep_results):
    sweep_results["loss"] = {"emo": sweep_results["loss"]["emo"], "anneal": sweep_results["loss"]["emo"],
                             "std": sweep_results["loss"]["std"]}
    header, *_ = summary_table(sweep_results).splitlines()
    assert header.rstrip(" |").endswith("emo / std | anneal / std")
    rows = _rows(summary_table(sweep_results))
    ratio = mean_increase(sweep_results, "emo", "0.5") / mean_increase(sweep_results, "std", "0.5")
    assert rows[0][4] == rows[0][5] == f"{ratio:.2f}"


def test_no_ratio_when_the_denominator_prints_as_zero(sweep_results):
    for model, shift in (("emo", -0.00011), ("std", -0.00004)):  # both print as -0.000
        per_keep = sweep_results["loss"][model]
        per_keep["0.5"] = {d: per_keep["1"][d] + shift for d in per_keep["1"]}
    rows = _rows(summary_table(sweep_results))
    assert rows[0][1:] == ["-0.000", "-0.000", "n/a"]
