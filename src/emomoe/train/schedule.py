"""Learning-rate schedule: linear warmup from 0, then cosine (or linear) decay to a floor, then flat."""

from __future__ import annotations

import math

import torch

from emomoe.train.config import LRSchedule, TrainConfig


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Fraction of the peak LR used for the update that produces step `step + 1`.

    OLMo-core's schedules (`CosWithWarmup`, `LinearWithWarmup`, `WSD`) are functions of the update's
    number counted from 1: the first update of a warmup is at lr / warmup_steps, and the decay ends
    exactly on the run's last update. With `warmup_from_zero` the count starts at 0, as in Hugging
    Face Trainer's schedules (the fine-tuning recipe): the first update is at 0.
    """
    update = step + (0 if cfg.warmup_from_zero else 1)
    if update < cfg.warmup_steps:
        return update / cfg.warmup_steps
    if cfg.schedule is LRSchedule.CONSTANT:
        return 1.0
    span = cfg.total_decay_steps - cfg.warmup_steps
    progress = min(1.0, (update - cfg.warmup_steps) / span) if span > 0 else 1.0
    if cfg.schedule is LRSchedule.COSINE:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        shape = 1.0 - progress
    return cfg.final_lr_ratio + (1.0 - cfg.final_lr_ratio) * shape


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, start_step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """`cfg`'s schedule on `optimizer`, from `start_step` (a continued run's step): its next update
    gets `cfg.lr * lr_multiplier(start_step, cfg)`, whatever LR the optimizer's state held."""
    for group in optimizer.param_groups:
        group["initial_lr"] = cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg), last_epoch=start_step - 1)
