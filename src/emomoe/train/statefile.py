"""Trainer state on disk without pickle: tensors in safetensors, everything else in JSON.

Resuming reads a run directory that may come from someone else, and unpickling runs whatever
code the file names. So the state tree (optimizer, scheduler, data loader, pool sampler and RNG
states: dicts, lists, tuples, numbers, strings, tensors and numpy arrays) is split in two:

    NAME.safetensors   every tensor, keyed "t0", "t1", ...; numpy arrays as their raw bytes
    NAME.json          the tree, with {"$tensor": key}, {"$ndarray": key, "dtype", "shape"},
                       {"$tuple": [...]} and {"$items": [[key, value], ...]} (dicts whose keys
                       are not all plain strings) in place of what JSON cannot say

Loading parses JSON and reads safetensors: neither can run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from emomoe.errors import DataError

TENSORS_SUFFIX = ".safetensors"
TREE_SUFFIX = ".json"


def state_files(directory: Path, name: str) -> tuple[Path, Path]:
    return directory / f"{name}{TREE_SUFFIX}", directory / f"{name}{TENSORS_SUFFIX}"


def save_state(state: Any, directory: str | Path, name: str) -> None:
    """Write `state` as NAME.json + NAME.safetensors in `directory` (callers make it atomic)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, tensors)
    tree_file, tensors_file = state_files(Path(directory), name)
    save_file(tensors, str(tensors_file))
    tree_file.write_text(json.dumps(tree, allow_nan=True))


def load_state(directory: str | Path, name: str) -> Any:
    """Read what `save_state` wrote; DataError naming the file if either is missing or damaged."""
    tree_file, tensors_file = state_files(Path(directory), name)
    for file in (tree_file, tensors_file):
        if not file.is_file():
            raise DataError(f"{file}: trainer state not found (is {directory} a training checkpoint?)")
    try:
        tensors = load_file(str(tensors_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(f"{tensors_file}: not a readable safetensors file ({e}); it is truncated or damaged") from None
    try:
        tree = json.loads(tree_file.read_text())
        return _decode(tree, tensors)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{tree_file}: damaged trainer state ({type(e).__name__}: {e})") from None


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"$tensor": key}
    if isinstance(value, np.ndarray):
        key = f"t{len(tensors)}"
        raw = np.ascontiguousarray(value)
        tensors[key] = torch.from_numpy(raw.view(np.uint8).reshape(-1).copy())
        return {"$ndarray": key, "dtype": raw.dtype.str, "shape": list(raw.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: _encode(v, tensors) for k, v in value.items()}
        return {"$items": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"trainer state holds a {type(value).__name__}, which has no safe on-disk form")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "$tensor" in value:
        return tensors[value["$tensor"]]
    if "$ndarray" in value:
        raw = tensors[value["$ndarray"]].numpy()
        return raw.view(np.dtype(value["dtype"])).reshape(value["shape"]).copy()
    if "$tuple" in value:
        return tuple(_decode(v, tensors) for v in value["$tuple"])
    if "$items" in value:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in value["$items"]}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _hashable(key: Any) -> Any:
    hash(key)  # a list key means the file was edited: TypeError, reported as damage
    return key
