"""`train.anneal_from`: OLMo-core's anneal, a run continued from another run's full trainer state.

The official anneal (`olmoe-1B-7B_fsl_anneal.py`) loads a pretraining checkpoint with its trainer
state: the weights, AdamW's moments, the step and the data position. It then trains to a total
step count with OLMo-core's `WSD` schedule, its warmup set to the checkpoint's step and its decay
to the remaining steps: from the checkpoint's LR straight down to 0 on the last update. Here that
is the `linear` schedule with `warmup_steps` at the checkpoint's step and `final_lr_ratio` 0.

Unlike `train.init_from` (weights only), the model config may switch the router (to EMO, or keep
it standard) but everything else carries over; the run counts its steps on from the checkpoint's.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from emomoe.errors import ConfigError
from emomoe.train.checkpointing import TRAINER_STATE, CheckpointManager, Restored, read_checkpoint
from emomoe.train.config import LRSchedule, TrainConfig
from emomoe.train.rundir import holds_run
from emomoe.train.statefile import state_files

STATE_KEY = "anneal"
"""Where an anneal's checkpoints keep its start (`AnnealStart.to_state`), so a resumed anneal
decays on the same line."""


@dataclasses.dataclass(frozen=True)
class AnnealStart:
    step: int
    """The step of the checkpoint the anneal continues."""
    lr: float
    """The checkpoint's LR: the rate its optimizer holds, the one its next update would have used."""

    @classmethod
    def of_checkpoint(cls, state: dict[str, Any]) -> AnnealStart:
        return cls(step=int(state["step"]), lr=float(state["optimizer"]["param_groups"][0]["lr"]))

    def to_state(self) -> dict[str, Any]:
        return {"step": self.step, "lr": self.lr}


def read_anneal_source(spec: str | Path) -> Restored:
    """The checkpoint `train.anneal_from` names: a run directory's newest intact one, or the one given
    (RUN_DIR/checkpoints/step-N). ConfigError if `spec` is neither, DataError if it does not read back."""
    path = Path(spec)
    if holds_run(path):
        restored = CheckpointManager(path, num_kept=1).restore_newest()
        if restored is None:
            raise ConfigError(f"train.anneal_from: {path} holds a run but no checkpoint to anneal from")
        return restored
    if state_files(path, TRAINER_STATE)[0].is_file():
        return read_checkpoint(path)
    raise ConfigError(
        f"train.anneal_from: {path} is neither a run directory nor a training checkpoint (RUN_DIR/checkpoints/step-N)"
    )


def check_anneal_length(cfg: TrainConfig, start: AnnealStart) -> None:
    if cfg.max_steps <= start.step:
        raise ConfigError(
            f"train.max_steps: {cfg.max_steps} must be more than the step of train.anneal_from's checkpoint "
            f"({start.step}): the anneal counts on from it, to max_steps in all"
        )


def anneal_schedule(cfg: TrainConfig, start: AnnealStart) -> TrainConfig:
    """`cfg` with OLMo-core's WSD decay from `start`: `lr_multiplier` of update u is (max_steps - u) /
    (max_steps - start.step) of the checkpoint's LR, so 0 on the last update."""
    return dataclasses.replace(
        cfg, lr=start.lr, warmup_steps=start.step, warmup_from_zero=False, schedule=LRSchedule.LINEAR,
        decay_steps=None, final_lr_ratio=0.0,
    )
