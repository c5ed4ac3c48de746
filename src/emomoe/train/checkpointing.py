"""Training checkpoints under RUN_DIR/checkpoints/.

Layout of a single process's or a DDP run's checkpoint:
    checkpoints/step-00000100/model.safetensors, model.yaml   (a model checkpoint: see emomoe.checkpoint)
    checkpoints/step-00000100/trainer_state.json, .safetensors (optimizer, scheduler, data, RNG, step;
                                                                no pickle: see train.statefile)
    checkpoints/step-00000100/checksums.sha256                 (sha256 of every file above)
    checkpoints/latest                                         (text: the name of the newest step dir)

An FSDP run's checkpoint is sharded: no process gathers the model or the optimizer.
    checkpoints/step-00000100/state-0000R-of-0000W.safetensors, shards.json
                                                  (rank R's shards of the weights and AdamW moments,
                                                   and their index: see train.shard_files)
    checkpoints/step-00000100/model.yaml          (the architecture, for `emomoe checkpoint consolidate`)
    checkpoints/step-00000100/trainer_state.*     (as above, the optimizer's param groups only)
    checkpoints/step-00000100/checksums.sha256    (each rank hashes its own shard file)
It resumes at any world size and under any strategy (`train.sharded`).

Each step directory is assembled under a temporary name, flushed to disk and renamed into place,
and `latest` is rewritten atomically after it, so a crash at any moment leaves the previous
checkpoint usable. A checkpoint is complete when it has its checksums; resuming verifies them and,
if the newest checkpoint is damaged (a truncated file, a flipped byte), falls back to the newest
intact one and says so. The processes of a run verify a sharded checkpoint together, each
hashing its share of the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from emomoe import distributed
from emomoe.checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_model
from emomoe.errors import DataError, warn
from emomoe.io import (
    CHECKSUMS_FILE,
    atomic_path,
    atomic_write_text,
    file_sha256,
    read_checksums,
    verify_checksums,
    write_checksums,
)
from emomoe.model.config import ModelConfig
from emomoe.train.shard_files import INDEX_FILE as SHARD_INDEX_FILE
from emomoe.train.shard_files import read_index, shard_file
from emomoe.train.sharded import save_shards
from emomoe.train.statefile import load_state, save_state, state_files

TRAINER_STATE = "trainer_state"
STATE_KEYS = ("step", "tokens_seen", "world_size", "optimizer", "scheduler", "ranks")
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


@dataclasses.dataclass
class Restored:
    """A verified checkpoint, read back: where it is, its weights and its trainer state."""

    path: Path
    weights: dict[str, torch.Tensor] | None
    """None for a sharded checkpoint: the model and optimizer load from its shards
    (`train.sharded.load_shards`) once the model is wrapped."""
    state: dict[str, Any]


class CheckpointManager:
    """Writes, finds, verifies and prunes the checkpoints of one run directory."""

    def __init__(self, run_dir: str | Path, num_kept: int):
        self.root = Path(run_dir) / "checkpoints"
        self.num_kept = num_kept

    def save(self, step: int, model: nn.Module, model_cfg: ModelConfig, trainer_state: dict[str, Any]) -> Path:
        """Write the checkpoint of `step`, point `latest` at it, and delete all but the newest `num_kept`."""
        target = self.root / step_dir_name(step)
        with atomic_path(target) as tmp:
            save_model(tmp, model, model_cfg, meta={"step": step})
            save_state(trainer_state, tmp, TRAINER_STATE)
            write_checksums(tmp)
        self._point_latest_at(target)
        return target

    def save_sharded(
        self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, model_cfg: ModelConfig,
        trainer_state: dict[str, Any],
    ) -> Path:
        """Write the sharded checkpoint of `step` (a collective: every rank calls it; `trainer_state`,
        without the optimizer, matters on the main process only), then as `save`."""
        target = self.root / step_dir_name(step)
        with _shared_atomic_dir(target) as tmp:
            param_groups = save_shards(tmp, model, optimizer)
            mine = shard_file(distributed.get_rank(), distributed.get_world_size())
            digests = distributed.gather_objects({mine: file_sha256(tmp / mine)})
            if distributed.is_main_process():
                model_cfg.to_yaml(tmp / CONFIG_FILE)
                save_state({**trainer_state, "optimizer": {"param_groups": param_groups}}, tmp, TRAINER_STATE)
                write_checksums(tmp, known={k: v for rank in digests for k, v in rank.items()})
        if distributed.is_main_process():
            self._point_latest_at(target)
        return target

    def _point_latest_at(self, target: Path) -> None:
        atomic_write_text(self.root / LATEST_FILE, target.name + "\n")
        self._prune()

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints present (those with checksums), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for child in self.root.iterdir():
            match = _STEP_DIR.match(child.name)
            if match and (child / CHECKSUMS_FILE).is_file():
                found.append(int(match.group(1)))
        return sorted(found)

    def latest(self) -> Path | None:
        """The newest complete checkpoint. (`latest` is written for people and scripts; a kill between the
        step directory's rename and the pointer's update leaves the pointer one checkpoint behind.)"""
        steps = self.steps()
        return self.root / step_dir_name(steps[-1]) if steps else None

    def restore_newest(self) -> Restored | None:
        """The newest checkpoint that reads back intact; each damaged newer one is skipped with a warning.

        None if there is no checkpoint at all; DataError if there are some and none is intact.
        """
        candidates = [self.root / step_dir_name(step) for step in reversed(self.steps())]
        problems = [f"{path}: incomplete (no {CHECKSUMS_FILE})" for path in self._incomplete()]
        for path in candidates:
            try:
                restored = read_checkpoint(path)
            except DataError as e:
                problems.append(str(e))
                continue
            for problem in problems:
                warn(f"skipping a damaged checkpoint: {problem}")
            if problems:
                warn(f"resuming from the newest intact checkpoint instead: {path}")
            return restored
        if problems:
            raise DataError(f"{self.root}: no intact checkpoint to resume from ({'; '.join(problems)})")
        return None

    def remove_temporaries(self) -> None:
        """Delete what a killed writer left behind: half-built step directories and pointer files."""
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.name.startswith(".") and child.name.endswith(".tmp"):
                    shutil.rmtree(child, ignore_errors=True)

    def _incomplete(self) -> list[Path]:
        """Step directories that are not complete checkpoints (written by an older emomoe, or edited)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if _STEP_DIR.match(p.name) and not (p / CHECKSUMS_FILE).is_file())

    def _prune(self) -> None:
        for step in self.steps()[: -self.num_kept]:
            # Renamed first, so that a kill during the deletion leaves a temporary, not a torn checkpoint.
            doomed = self.root / f".{step_dir_name(step)}.deleting.tmp"
            os.replace(self.root / step_dir_name(step), doomed)
            shutil.rmtree(doomed, ignore_errors=True)


@contextlib.contextmanager
def _shared_atomic_dir(target: Path) -> Iterator[Path]:
    """`io.atomic_path` for a directory that every rank writes into: the main process creates the
    temporary directory and, after the block has run on every rank, renames it into place."""
    with contextlib.ExitStack() as stack:
        created = None
        if distributed.is_main_process():
            created = stack.enter_context(atomic_path(target))
            created.mkdir()
        yield Path(distributed.broadcast_object(str(created)))
    distributed.barrier()


def read_checkpoint(path: str | Path) -> Restored:
    """Verify a training checkpoint's checksums, then read its weights and trainer state.

    A sharded checkpoint's weights stay on disk, and all ranks verify its files together (so every
    rank must call this for it, in the same order).
    """
    path = Path(path)
    if SHARD_INDEX_FILE not in read_checksums(path):
        state_names = [file.name for file in state_files(path, TRAINER_STATE)]
        verify_checksums(path, required=[CONFIG_FILE, WEIGHTS_FILE, *state_names])
        return Restored(path, load_file(str(path / WEIGHTS_FILE)), load_trainer_state(path))
    _verify_together(path)
    read_index(path)
    return Restored(path, None, load_trainer_state(path))


def _verify_together(path: Path) -> None:
    """verify_checksums, with each rank hashing every world-size-th file: the same verdict everywhere."""
    names = sorted(read_checksums(path))
    problem = None
    try:
        verify_checksums(path, names[distributed.get_rank() :: distributed.get_world_size()])
    except DataError as e:
        problem = str(e)
    problems = [p for p in distributed.all_gather_objects(problem) if p is not None]
    if problems:
        raise DataError(problems[0])


def load_trainer_state(checkpoint_dir: str | Path) -> dict[str, Any]:
    state = load_state(checkpoint_dir, TRAINER_STATE)
    missing = [key for key in STATE_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise DataError(f"{checkpoint_dir}: trainer state lacks {', '.join(missing)}")
    return state
