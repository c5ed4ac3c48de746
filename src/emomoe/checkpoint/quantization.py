"""quantization.json: what marks a checkpoint whose weights are stored as integers.

`emomoe quantize` writes it beside model.yaml. It says how the integers were made (bits, group
size; see `emomoe.model.quantized` for the layout) and the float dtype they stand for, and, like a
subset's selection.json, names the checkpoint it was made from, so that the tokenizer and the
training run are found through it. model.yaml stays the architecture alone: a reader that
dequantizes (`CheckpointReader.get`) hands out an ordinary model's tensors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from emomoe.errors import DataError
from emomoe.io import read_json
from emomoe.model.quantized import GROUP_MULTIPLE, is_group_size

QUANTIZATION_FILE = "quantization.json"
FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Quantization:
    bits: int
    group_size: int
    dtype: str
    """The float dtype the integers were made from, and which dequantizing gives back."""
    source: dict[str, Any]
    """The checkpoint it was made from: its path, format and fingerprint (`source_checkpoint`, ...)."""

    @property
    def torch_dtype(self) -> torch.dtype:
        return FLOAT_DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.bits, "group_size": self.group_size, "dtype": self.dtype, **self.source}


def read_quantization(directory: Path) -> Quantization | None:
    """The checkpoint's quantization record, None for float weights; DataError naming the field."""
    path = directory / QUANTIZATION_FILE
    if not path.is_file():
        return None
    record = read_json(path)
    if not isinstance(record, dict):
        raise DataError(f"{path}: expected a JSON object")
    bits, group_size, dtype = record.get("bits"), record.get("group_size"), record.get("dtype")
    if bits not in (8, 4):
        raise DataError(f"{path}: 'bits' is {bits!r}, expected 8 or 4")
    if not is_group_size(group_size):
        raise DataError(f"{path}: 'group_size' is {group_size!r}, expected a multiple of {GROUP_MULTIPLE}")
    if dtype not in FLOAT_DTYPES:
        raise DataError(f"{path}: 'dtype' is {dtype!r}, expected one of {', '.join(FLOAT_DTYPES)}")
    source = {k: v for k, v in record.items() if k not in ("bits", "group_size", "dtype")}
    return Quantization(bits, group_size, dtype, source)
