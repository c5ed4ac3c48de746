"""Training checkpoints under RUN_DIR/checkpoints/.

Layout:
    checkpoints/step-00000100/model.safetensors, model.yaml   (a model checkpoint: see emomoe.checkpoint)
    checkpoints/step-00000100/trainer_state.pt                (optimizer, scheduler, data, RNG, step)
    checkpoints/latest                                        (text: the name of the newest step dir)

Each step directory is assembled under a temporary name and renamed into place, and `latest` is
rewritten atomically after it, so a crash at any moment leaves the previous checkpoint usable.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emomoe.checkpoint import save_model
from emomoe.errors import DataError
from emomoe.io import atomic_path, atomic_write_text
from emomoe.model.config import ModelConfig

TRAINER_STATE_FILE = "trainer_state.pt"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


class CheckpointManager:
    """Writes, finds and prunes the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, num_kept: int):
        self.root = Path(run_dir) / "checkpoints"
        self.num_kept = num_kept

    def save(self, step: int, model: nn.Module, model_cfg: ModelConfig, trainer_state: dict[str, Any]) -> Path:
        """Write the checkpoint of `step`, point `latest` at it, and delete all but the newest `num_kept`."""
        target = self.root / step_dir_name(step)
        with atomic_path(target) as tmp:
            save_model(tmp, model, model_cfg, meta={"step": step})
            torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
        atomic_write_text(self.root / LATEST_FILE, target.name + "\n")
        self._prune()
        return target

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints present, oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / TRAINER_STATE_FILE).is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def latest(self) -> Path | None:
        """The checkpoint `latest` names, or the newest complete one if the pointer is missing or stale."""
        pointer = self.root / LATEST_FILE
        if pointer.is_file():
            named = self.root / pointer.read_text().strip()
            if (named / TRAINER_STATE_FILE).is_file():
                return named
        steps = self.steps()
        return self.root / step_dir_name(steps[-1]) if steps else None

    def _prune(self) -> None:
        for step in self.steps()[: -self.num_kept]:
            shutil.rmtree(self.root / step_dir_name(step), ignore_errors=True)


def load_trainer_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    path = Path(checkpoint_dir) / TRAINER_STATE_FILE
    try:
        # The state holds numpy RNG state and Python tuples, which the weights-only loader rejects;
        # the file is one this trainer wrote into the user's own run directory.
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise DataError(f"{path}: trainer state not found (is {checkpoint_dir} a training checkpoint?)") from None
