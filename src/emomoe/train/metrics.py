"""Per-step metrics: one JSON object per line in RUN_DIR/metrics.jsonl, mirrored to TensorBoard event
files under RUN_DIR/tensorboard (`train.tensorboard`, on by default; needs `pip install 'emomoe[tensorboard]'`,
and says so at start-up when it is missing).

Records are flat dicts of numbers keyed by name ("ce", "lr", "routing/layer0/dead_experts",
"val/legal", ...) plus "step". On resume the file is cut back to the checkpoint's step, so a
resumed run's file reads exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from emomoe.errors import DataError, MissingDependency, optional_import, warn
from emomoe.io import atomic_write_text, write_errors

METRICS_FILE = "metrics.jsonl"
TIMING_KEYS = ("tokens_per_s", "mfu", "elapsed_s", "threads")
"""Wall-clock fields: the only ones that legitimately differ between a resumed and an uninterrupted run."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file. A last line cut short (the writer was killed mid-line) is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise DataError(f"{path}: line {number} is not valid JSON") from None
    return records


class MetricsWriter:
    """Appends records to metrics.jsonl (flushed every line) and, optionally, TensorBoard."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self._file = None
        self._tb = _tensorboard_writer(Path(run_dir) / "tensorboard") if tensorboard else None

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step`: they belong to work the resumed run will redo."""
        kept = [r for r in read_metrics(self.path) if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a")
        with write_errors(self.path, "the run stops here; free space and continue with --resume"):
            self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
            self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()


def _jsonable(value: Any) -> Any:
    # JSON has no NaN/inf; a diverged step is still worth recording, as a string.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _tensorboard_writer(log_dir: Path):
    try:
        optional_import("tensorboard", "tensorboard", "train.tensorboard")
    except MissingDependency as e:  # optional: metrics.jsonl has everything
        warn(f"{e} (or set train.tensorboard=false); metrics go to metrics.jsonl only")
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))
