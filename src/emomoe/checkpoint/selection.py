"""selection.json: the record a subset keeps of where it came from, and the chain of models it
was sliced (or quantized) from.

A subset directory is an ordinary checkpoint plus this file, which names the source checkpoint and
its fingerprint, the kept routed experts per MoE layer in the source's numbering, and how they were
chosen (`emomoe.select` writes it). Everything that follows a model back to its source (its
tokenizer, its training run, an export's provenance) reads it here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from emomoe.checkpoint.quantization import read_quantization
from emomoe.errors import DataError

SELECTION_FILE = "selection.json"
MAX_LINEAGE = 8
"""Subsets of subsets followed back at most this far."""


def selection_path(selection: str | Path) -> Path:
    """A selection file given directly, or the selection.json of a subset directory."""
    path = Path(selection)
    return path / SELECTION_FILE if path.is_dir() else path


def read_selection(selection: str | Path) -> dict[str, Any]:
    """The record of a selection.json (or of a subset directory's)."""
    path = selection_path(selection)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{selection}: not a subset or selection file (no {path.name})") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
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
