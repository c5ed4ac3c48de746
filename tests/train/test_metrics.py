import json
import math
import sys

import pytest

from emomoe.errors import DataError
from emomoe.train.metrics import METRICS_FILE, MetricsWriter, read_metrics


def test_write_read_and_truncate(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    for step in range(1, 6):
        writer.write({"step": step, "ce": 1.0 / step})
    writer.close()
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    assert records[2]["ce"] == 1.0 / 3

    resumed = MetricsWriter(tmp_path, tensorboard=False)
    resumed.truncate_after(3)
    resumed.write({"step": 4, "ce": 9.0})
    resumed.close()
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [r["step"] for r in records] == [1, 2, 3, 4] and records[-1]["ce"] == 9.0


def test_non_finite_values_stay_valid_json(tmp_path):
    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write({"step": 1, "ce": math.nan, "grad_norm": math.inf})
    writer.close()
    line = (tmp_path / METRICS_FILE).read_text().strip()
    record = json.loads(line)  # strict JSON would reject bare NaN
    assert "NaN" not in line and record["ce"] == "nan" and record["grad_norm"] == "inf"


def test_missing_file_reads_empty(tmp_path):
    assert read_metrics(tmp_path / "nope.jsonl") == []


def test_tensorboard_event_files_are_real_and_readable(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    writer = MetricsWriter(tmp_path, tensorboard=True)
    for step in (1, 2, 3):
        writer.write({"step": step, "ce": 5.0 - step, "val/legal": 4.5})
    writer.close()
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("ce")] == [(1, 4.0), (2, 3.0), (3, 2.0)]
    assert [e.step for e in events.Scalars("val/legal")] == [1, 2, 3]


def test_without_tensorboard_installed_the_run_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    writer = MetricsWriter(tmp_path, tensorboard=True)
    writer.write({"step": 1, "ce": 1.0})
    writer.close()
    assert "train.tensorboard needs the 'tensorboard' package: pip install 'emomoe[tensorboard]'" in capsys.readouterr().err
    assert read_metrics(tmp_path / METRICS_FILE) == [{"step": 1, "ce": 1.0}]
    assert not (tmp_path / "tensorboard").exists()


def test_a_line_cut_short_is_dropped_but_damage_elsewhere_is_named(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 1}\n{"step": 2, "ce": 4.')
    assert read_metrics(path) == [{"step": 1}]
    path.write_text('{"step": 1\n{"step": 2}\n')
    with pytest.raises(DataError, match="metrics.jsonl: line 1 is not valid JSON"):
        read_metrics(path)
