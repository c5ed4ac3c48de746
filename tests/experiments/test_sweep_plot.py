from emomoe.experiments.sweep_plot import plot_loss_increase


def test_plot_writes_a_png(tmp_path, sweep_results):
    path = plot_loss_increase(sweep_results, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
