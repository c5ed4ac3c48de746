from emomoe.experiments.sweep_report import PLOT_FILE, write_report
from emomoe.experiments.sweep_tables import params_table, summary_table


def test_report_contains_tables_plot_and_training_facts(tmp_path, sweep_results):
    training = {"emo": {"steps": 10, "final loss": 1.5}, "std": {"steps": 10, "final loss": 1.4}}
    path = write_report(tmp_path, sweep_results, training=training, command="emomoe demo --out x")
    text = path.read_text()
    assert summary_table(sweep_results) in text
    assert params_table(sweep_results) in text
    assert f"]({PLOT_FILE})" in text and (tmp_path / PLOT_FILE).is_file()
    assert "emomoe demo --out x" in text
    assert "| emo | 10 | 1.5 |" in text
