"""Learning-rate schedule: linear warmup from 0, then cosine (or linear) decay to a floor, then flat."""

from __future__ import annotations

import math

import torch

from emomoe.train.config import LRSchedule, TrainConfig


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Fraction of the peak LR used for the update that produces step `step + 1`.

    Step 0 of a run with warmup therefore trains at lr/warmup rather than 0, so no step is wasted,
    unless `warmup_from_zero` asks for HF Trainer's schedule, whose first update is at 0.
    """
    if step < cfg.warmup_steps:
        return (step + (0 if cfg.warmup_from_zero else 1)) / cfg.warmup_steps
    if cfg.schedule is LRSchedule.CONSTANT:
        return 1.0
    span = cfg.total_decay_steps - cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / span) if span > 0 else 1.0
    if cfg.schedule is LRSchedule.COSINE:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return cfg.final_lr_ratio + (1.0 - cfg.final_lr_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
