"""From a checkpoint to a saved subset model: choose experts, slice, write weights + selection.json.

A subset directory is an ordinary model checkpoint (it loads with `emomoe.checkpoint.load_model`
at its own size, without the source) plus `selection.json`, which records where it came from:
the source checkpoint and its weights' sha256, the kept expert ids per MoE layer in the source's
numbering, the method, the calibration data and the seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from emomoe.checkpoint import checkpoint_hash, load_for_inference, save_model
from emomoe.errors import ConfigError, DataError
from emomoe.io import atomic_path
from emomoe.model import ModelConfig
from emomoe.select.calibration import Calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.methods import ExpertSelector, SelectMethod
from emomoe.select.routing import MoELayer, moe_layers
from emomoe.select.slicing import slice_model

SELECTION_FILE = "selection.json"
MAX_LINEAGE = 8
"""Subsets of subsets followed back at most this far."""


def select_subset(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    keep: KeepSpec,
    method: SelectMethod | str = SelectMethod.LAYERWISE,
    calibration: Calibration | None = None,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Select, slice and save a subset of `checkpoint` to `out_dir`; return its selection record.

    Everything is checked before anything is written, and the directory appears atomically.
    """
    method = SelectMethod(method)
    model, cfg = load_for_inference(checkpoint)
    layers = moe_layers(model, where=str(checkpoint))
    num_keep = keep.resolve([layer.num_routed for layer in layers])
    if method.needs_calibration and (calibration is None or not calibration.batches):
        raise ConfigError(f"method {method}: needs calibration data (--calib)")
    batches = calibration.batches if calibration is not None else []
    kept = ExpertSelector(model, layers, batches, method, seed=seed, progress=progress).choose(num_keep)
    sub, sub_cfg = slice_model(model, cfg, layers, kept)
    record = selection_record(
        checkpoint, cfg, sub_cfg, layers, kept, method=method, keep=keep, seed=seed,
        calibration=calibration.info if calibration is not None and method.needs_calibration else None,
    )
    save_subset(out_dir, sub, sub_cfg, record)
    return record


def selection_record(
    checkpoint: str | Path,
    cfg: ModelConfig,
    sub_cfg: ModelConfig,
    layers: list[MoELayer],
    kept: list[list[int]],
    *,
    method: SelectMethod,
    keep: KeepSpec,
    seed: int,
    calibration: dict[str, Any] | None,
) -> dict[str, Any]:
    total, active = sub_cfg.num_params()
    source_total, source_active = cfg.num_params()
    return {
        "source_checkpoint": str(Path(checkpoint).resolve()),
        "source_sha256": checkpoint_hash(checkpoint),
        "method": str(method),
        "keep": keep.label(),
        "seed": seed,
        "moe_layers": [layer.index for layer in layers],
        "kept_experts": kept,
        "num_routed_experts": [layer.num_routed for layer in layers],
        "num_shared_experts": [layer.num_shared for layer in layers],
        "calibration": calibration,
        "num_params": {"total": total, "active": active},
        "source_num_params": {"total": source_total, "active": source_active},
    }


def save_subset(out_dir: str | Path, model: nn.Module, cfg: ModelConfig, record: dict[str, Any]) -> Path:
    """Write the subset checkpoint and its selection.json as one atomic directory."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        save_model(tmp, model, cfg)
        (tmp / SELECTION_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def read_selection(subset_dir: str | Path) -> dict[str, Any]:
    path = Path(subset_dir) / SELECTION_FILE
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{subset_dir}: not a subset (no {SELECTION_FILE})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    for key in ("moe_layers", "kept_experts", "source_sha256"):
        if key not in record:
            raise DataError(f"{path}: missing '{key}'")
    return record


def lineage(checkpoint: Path) -> list[Path]:
    """`checkpoint`, then the models it was sliced from, as far as their directories still exist
    (a subset's selection.json names its source)."""
    dirs = [checkpoint]
    while (dirs[-1] / SELECTION_FILE).is_file() and len(dirs) <= MAX_LINEAGE:
        source = Path(read_selection(dirs[-1]).get("source_checkpoint", ""))
        if not source.is_dir():
            break
        dirs.append(source)
    return dirs
