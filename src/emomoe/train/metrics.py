"""Per-step metrics: one JSON object per line in RUN_DIR/metrics.jsonl, mirrored to TensorBoard if installed.

Records are flat dicts of numbers keyed by name ("ce", "lr", "routing/layer0/dead_experts",
"val/legal", ...) plus "step". On resume the file is cut back to the checkpoint's step, so a
resumed run's file reads exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from emomoe.io import atomic_write_text

METRICS_FILE = "metrics.jsonl"
TIMING_KEYS = ("tokens_per_s", "mfu", "elapsed_s", "threads")
"""Wall-clock fields: the only ones that legitimately differ between a resumed and an uninterrupted run."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


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
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # TensorBoard is optional: metrics.jsonl has everything
        return None
    return SummaryWriter(log_dir=str(log_dir))
