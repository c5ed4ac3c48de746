from emomoe.experiments.sweep_report import PLOT_FILE, write_report
from emomoe.experiments.sweep_tables import equal_bytes_line, equal_bytes_table, params_table, summary_table


def test_report_contains_tables_plot_and_training_facts(tmp_path, sweep_results):
    training = {"emo": {"steps": 10, "final loss": 1.5}, "std": {"steps": 10, "final loss": 1.4}}
    path = write_report(tmp_path, sweep_results, training=training, command="emomoe demo --out x")
    text = path.read_text()
    assert summary_table(sweep_results) in text
    assert params_table(sweep_results) in text
    assert f"]({PLOT_FILE})" in text and (tmp_path / PLOT_FILE).is_file()
    assert "emomoe demo --out x" in text
    assert "| emo | 10 | 1.5 |" in text


def test_the_equal_bytes_comparison_has_a_section_when_the_sweep_made_it(tmp_path, sweep_results):
    assert "## Equal bytes" not in write_report(tmp_path, sweep_results).read_text()
    sweep_results["equal_bytes"] = {"layerwise": {"emo": {"0.5": {
        "bytes": 1000, "loss": sweep_results["loss"]["layerwise"]["emo"]["0.5"],
        "kept_experts": {d: [[0, 1]] for d in ("code", "legal", "math")},
    }}}}
    text = write_report(tmp_path, sweep_results).read_text()
    assert "## Equal bytes" in text and equal_bytes_table(sweep_results) in text
    assert equal_bytes_line(sweep_results) in text
