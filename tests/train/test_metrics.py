import json
import math

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
