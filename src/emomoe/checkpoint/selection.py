"""selection.json: the record a subset keeps of where it came from, the chain of models it was
sliced (or quantized) from, and selections applied to the full model as routing masks.

A subset directory is an ordinary checkpoint plus this file, which names the source checkpoint and
its fingerprint, the kept routed experts per MoE layer in the source's numbering, how they were
chosen, and the source's router mass on the calibration tokens (`router_profile`, one list of
routed-expert probabilities per MoE layer; `emomoe.select` writes it). Everything that follows a
model back to its source (its tokenizer, its training run, an export's provenance) reads it here,
and so do the verbs that run the full model restricted to a selection (`SelectionConfig`,
`load_selections`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch

from emomoe.checkpoint.formats import SELECTION_FILE
from emomoe.checkpoint.models import checkpoint_hash
from emomoe.checkpoint.quantization import read_quantization
from emomoe.config import Config, ranged
from emomoe.errors import ConfigError, DataError
from emomoe.io import read_json
from emomoe.model import ModelConfig
from emomoe.model.selection import Selection, Selections

MAX_LINEAGE = 8
"""Subsets of subsets followed back at most this far."""
AUTO = "auto"
"""The first value of `--selection` that makes it choose among the files after it."""
AUTO_TOKENS = 32
"""Prompt tokens whose router mass chooses a selection by default."""


@dataclasses.dataclass
class SelectionConfig(Config):
    """Running a full model restricted to selections of its experts (generate, eval, lm-eval)."""

    selection: list[str] = dataclasses.field(default_factory=list)
    """Route only to the experts of this selection.json (or subset directory) of the checkpoint: the
    logits are the sliced subset's, with no copy on disk. `auto FILE FILE...` chooses one per prompt
    (per window in eval) from the router mass of its first auto_tokens tokens."""
    auto_tokens: int = ranged(AUTO_TOKENS, ge=1)
    """With `--selection auto`: the prompt tokens whose router mass chooses the selection."""

    def validate(self) -> None:
        super().validate()
        files = self.selection[1:] if self.auto else self.selection
        if AUTO in files:
            raise ConfigError(f"selection: '{AUTO}' comes first, before the files to choose among")
        if self.auto and len(files) < 2:
            raise ConfigError(f"selection: '{AUTO}' chooses among several selections; give at least two files after it")
        if not self.auto and len(files) > 1:
            raise ConfigError(
                f"selection: {len(files)} files; give one, or '{AUTO}' first to choose among them per prompt"
            )

    @property
    def auto(self) -> bool:
        return bool(self.selection) and self.selection[0] == AUTO


def selection_path(selection: str | Path) -> Path:
    """A selection file given directly, or the selection.json of a subset directory."""
    path = Path(selection)
    return path / SELECTION_FILE if path.is_dir() else path


def read_selection(selection: str | Path) -> dict[str, Any]:
    """The record of a selection.json (or of a subset directory's)."""
    path = selection_path(selection)
    if not path.exists():
        raise DataError(f"{selection}: not a subset or selection file (no {path.name})")
    record = read_json(path, "selection file")
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object")
    for key in ("moe_layers", "kept_experts", "source_sha256"):
        if key not in record:
            raise DataError(f"{path}: missing '{key}'")
    return record


def lineage(checkpoint: Path) -> list[Path]:
    """`checkpoint`, then the models it was sliced or quantized from, as far as their directories
    still exist (a subset's selection.json names its source, a quantized model's quantization.json)."""
    dirs = [checkpoint]
    while len(dirs) <= MAX_LINEAGE:
        source = _source_of(dirs[-1])
        if source is None or not source.is_dir():
            break
        dirs.append(source)
    return dirs


def _source_of(checkpoint: Path) -> Path | None:
    if (checkpoint / SELECTION_FILE).is_file():
        source = read_selection(checkpoint).get("source_checkpoint")
    else:
        quantization = read_quantization(checkpoint)
        source = quantization.source.get("source_checkpoint") if quantization else None
    # Not Path(""): that is the working directory.
    return Path(source) if source else None


def check_selection(
    record: dict[str, Any], cfg: ModelConfig, fingerprint: str, checkpoint: Path, path: Path
) -> list[list[int]]:
    """The kept experts of a selection record, checked to belong to the checkpoint with config `cfg`
    and weights fingerprint `fingerprint`."""
    if record["source_sha256"] != fingerprint:
        raise DataError(
            f"{path}: was made for another model (source fingerprint {str(record['source_sha256'])[:12]}..., "
            f"from {record.get('source_checkpoint', 'an unnamed checkpoint')}), not {checkpoint} "
            f"({fingerprint[:12]}...)"
        )
    routed = _routed_per_moe_layer(cfg)
    if record["moe_layers"] != list(routed):
        raise DataError(f"{path}: MoE layers {record['moe_layers']}, {checkpoint} has {list(routed)}")
    kept = record["kept_experts"]
    if not isinstance(kept, list) or len(kept) != len(routed):
        raise DataError(f"{path}: 'kept_experts' must hold one list per MoE layer ({len(routed)})")
    for (index, num_routed), ids in zip(routed.items(), kept):
        valid = isinstance(ids, list) and ids and all(isinstance(i, int) for i in ids)
        if not (valid and ids == sorted(set(ids)) and 0 <= ids[0] and ids[-1] < num_routed):
            raise DataError(
                f"{path}: kept_experts of layer {index} must be ascending distinct routed expert ids "
                f"in [0, {num_routed}), got {ids}"
            )
    return kept


def _routed_per_moe_layer(cfg: ModelConfig) -> dict[int, int]:
    """Block index -> routed experts, for every block that routes (a selection's `moe_layers`)."""
    return {i: cfg.moe.routed_in_layer(i) for i in range(cfg.num_layers) if cfg.moe.routed_in_layer(i) > 0}


def read_profile(record: dict[str, Any], cfg: ModelConfig, path: Path) -> list[torch.Tensor] | None:
    """The record's `router_profile` (one [E] tensor per MoE layer), checked; None if it has none."""
    profile = record.get("router_profile")
    if profile is None:
        return None
    routed = list(_routed_per_moe_layer(cfg).values())
    shapes_ok = isinstance(profile, list) and len(profile) == len(routed) and all(
        isinstance(p, list) and len(p) == n for p, n in zip(profile, routed)
    )
    values_ok = shapes_ok and all(
        isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for p in profile for v in p
    )
    if not values_ok:
        raise DataError(
            f"{path}: 'router_profile' must hold one list of {routed} non-negative probabilities per MoE layer"
        )
    return [torch.tensor(p, dtype=torch.float64) for p in profile]


def load_selections(checkpoint: str | Path, model: torch.nn.Module, cfg: SelectionConfig) -> Selections | None:
    """The selections `cfg.selection` names, checked against `checkpoint` and applied to `model`,
    loaded from it; None if it names none. A single file is in force from now on; after `auto`,
    each needs its router profile, and none is in force until one is chosen."""
    if not cfg.selection:
        return None
    fingerprint = checkpoint_hash(checkpoint)
    paths = [selection_path(s) for s in (cfg.selection[1:] if cfg.auto else cfg.selection)]
    names = [p.parent.name if p.name == SELECTION_FILE else p.stem for p in paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in paths]
    selections = []
    for name, path in zip(names, paths):
        record = read_selection(path)
        kept = check_selection(record, model.cfg, fingerprint, Path(checkpoint), path)
        profile = read_profile(record, model.cfg, path)
        if cfg.auto and profile is None:
            raise DataError(
                f"{path}: has no router_profile (random selections and those made with --no-router-profile "
                f"have none), which --selection {AUTO} compares prompts with; select it again with calibration data"
            )
        selections.append(Selection(name, kept, profile))
    return Selections(model, selections, auto=cfg.auto, auto_tokens=cfg.auto_tokens)
