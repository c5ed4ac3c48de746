"""Names for the models of verbs that take several checkpoints (sweep, analyze)."""

from __future__ import annotations

from pathlib import Path

from emomoe.errors import ConfigError
from emomoe.train.rundir import FINAL_DIR


def model_names(checkpoints: list[str], names: list[str] | None) -> dict[str, str]:
    """Model name -> checkpoint; names default to the checkpoint directory names, or to the run
    directory's name for a run's `final` checkpoint (runs/emo/final -> emo)."""
    names = names or [Path(c).resolve().parent.name if Path(c).name == FINAL_DIR else Path(c).name for c in checkpoints]
    if len(names) != len(checkpoints):
        raise ConfigError(f"--names: {len(names)} names for {len(checkpoints)} checkpoints")
    if len(set(names)) != len(names):
        raise ConfigError(f"--names: model names must differ, got {', '.join(names)} (pass --names)")
    return dict(zip(names, checkpoints))
