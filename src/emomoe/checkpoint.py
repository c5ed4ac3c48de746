"""Model-only checkpoints: a directory with `model.safetensors` and `model.yaml`.

This is the format every consumer of a trained model reads (selection, evaluation, the HF
converter), whether the model was trained here, sliced into a subset, or imported. Trainer state
(optimizer, data loader, RNG) is the trainer's business and lives beside it, not in it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors.torch import load_file, save_file

from emomoe.errors import ConfigError, DataError
from emomoe.io import atomic_path

if TYPE_CHECKING:
    import torch

    from emomoe.model.config import ModelConfig

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.yaml"
META_FILE = "meta.json"


def save_model(
    directory: str | Path, model: torch.nn.Module, cfg: ModelConfig, meta: dict[str, Any] | None = None
) -> Path:
    """Write the model's weights and config to `directory` atomically (replacing what was there)."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "emomoe"})
        cfg.to_yaml(tmp / CONFIG_FILE)
        if meta is not None:
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    from emomoe.model.config import ModelConfig

    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise DataError(f"{directory}: not a model checkpoint (no {CONFIG_FILE}; expected {WEIGHTS_FILE} + {CONFIG_FILE})")
    try:
        return ModelConfig.from_yaml(path)
    except ConfigError as e:
        raise DataError(str(e)) from None


def load_model(
    directory: str | Path, device: str | torch.device = "cpu", overrides: list[str] | None = None
) -> tuple[torch.nn.Module, ModelConfig]:
    """Build the model described by `model.yaml` (with dotted `overrides` of fields that do not
    change the weights, e.g. the router's pool) and load `model.safetensors` into it (strictly)."""
    from emomoe.model import build_model

    directory = Path(directory)
    cfg = load_config(directory)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise DataError(f"{directory}: not a model checkpoint (no {WEIGHTS_FILE})")
    model = build_model(cfg)
    state = load_file(str(weights), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise DataError(f"{weights}: weights do not match {directory / CONFIG_FILE} ({what})")
    return model.to(device), cfg


def checkpoint_hash(directory: str | Path) -> str:
    """sha256 of the weights file: identifies the exact source of a derived model."""
    digest = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
