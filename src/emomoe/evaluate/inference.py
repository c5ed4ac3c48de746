"""Loading a checkpoint the way selection and evaluation use it: eval mode, no document pool.

Every number in the paper, for full models and subsets alike, comes from pool-free routing (the
HF inference behaviour); an EMO checkpoint may have been trained with an eval-mode pool for its
in-loop validation, which must not leak into selection or held-out evaluation here.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from emomoe.checkpoint import load_model
from emomoe.errors import ConfigError, DataError
from emomoe.model import ModelConfig


def load_for_inference(directory: str | Path) -> tuple[nn.Module, ModelConfig]:
    model, cfg = load_model(directory, overrides=["moe.router.eval_pool=off"])
    return model.eval(), cfg


def check_fits(cfg: ModelConfig, checkpoint: str | Path, *, vocab_size: int, seq_len: int) -> None:
    """Raise unless windows of `seq_len` tokens from a `vocab_size` vocabulary fit the model."""
    if vocab_size > cfg.vocab_size:
        raise DataError(
            f"{checkpoint}: the data's vocabulary ({vocab_size}) is larger than the model's ({cfg.vocab_size})"
        )
    if seq_len > cfg.max_seq_len:
        raise ConfigError(f"seq_len: {seq_len} exceeds {checkpoint}'s max_seq_len {cfg.max_seq_len}")
