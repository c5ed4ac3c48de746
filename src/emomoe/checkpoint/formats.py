"""On-disk checkpoint formats: how a directory's config and tensor names map onto ours.

A `Format` recognises its directories, reads their config as our `ModelConfig`, and says where
each of our tensors lives in the safetensors files: under one key, or (Hugging Face's per-expert
matrices) one key per row of a stacked tensor. Our own format, `model.yaml` beside the weights
with our names, is the identity mapping. Other formats (Hugging Face layouts) register
themselves with `register_format`, called by the `emomoe.checkpoint_formats` entry points of the
installed packages (ours registers `emomoe.hf.formats`) before the first directory is detected:
a format registers from above without this package importing it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Protocol

import torch

from emomoe.errors import ConfigError, DataError
from emomoe.model.config import ModelConfig

CONFIG_FILE = "model.yaml"
META_FILE = "meta.json"
SELECTION_FILE = "selection.json"
"""Beside a subset's weights: which experts of which checkpoint it keeps (`checkpoint.selection`)."""
TRAINING_SHARDS_FILE = "shards.json"
"""The index of a sharded training checkpoint (`emomoe.train.shard_files` writes it): a step of an
FSDP run, which `emomoe checkpoint consolidate` turns into a model checkpoint."""

TensorInfo = tuple[tuple[int, ...], torch.dtype]
"""Shape and dtype of a tensor in the files, known without reading its data."""


@dataclasses.dataclass(frozen=True)
class TensorSource:
    keys: tuple[str, ...]
    """File keys: one for a tensor stored whole, or one per row of dim 0 when `stacked`; its
    integers and their scales (`<name>.qdata`, `<name>.scales`) when `quantized`."""
    stacked: bool = False
    quantized: bool = False

    @classmethod
    def whole(cls, key: str) -> TensorSource:
        return cls((key,))

    @classmethod
    def rows(cls, keys: list[str]) -> TensorSource:
        return cls(tuple(keys), stacked=True)


class Format(Protocol):
    name: str
    config_file: str
    """The file in the directory that holds the architecture."""

    def detect(self, directory: Path) -> bool:
        """Whether `directory` holds a checkpoint of this format (cheap: looks at config files only)."""

    def read_config(self, directory: Path) -> ModelConfig:
        """The checkpoint's architecture as our config; DataError naming the file and field if it
        is not one emomoe can run."""

    def sources(self, cfg: ModelConfig, keys: Mapping[str, TensorInfo]) -> dict[str, TensorSource]:
        """Our tensor name -> where it is stored, for every tensor of the model; DataError naming
        the key for a file key this format does not know."""


class EmomoeFormat:
    """Our own checkpoints: `model.yaml` and safetensors files under our tensor names."""

    name = "emomoe"
    config_file = CONFIG_FILE

    def detect(self, directory: Path) -> bool:
        return (directory / CONFIG_FILE).is_file()

    def read_config(self, directory: Path) -> ModelConfig:
        try:
            return ModelConfig.from_yaml(directory / CONFIG_FILE)
        except ConfigError as e:
            raise DataError(str(e)) from None

    def sources(self, cfg: ModelConfig, keys: Mapping[str, TensorInfo]) -> dict[str, TensorSource]:
        return {key: TensorSource.whole(key) for key in keys}


_FORMATS: list[Format] = [EmomoeFormat()]
ENTRY_POINT_GROUP = "emomoe.checkpoint_formats"


_installed_registered = False


def _register_installed_formats() -> None:
    global _installed_registered
    if _installed_registered:
        return
    _installed_registered = True  # before the calls: they register through register_format
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        entry_point.load()()


def register_format(fmt: Format) -> None:
    """Make `fmt` readable everywhere a checkpoint is read; later registrations are tried first."""
    _register_installed_formats()  # first, so that a program's own formats stay ahead of them
    _FORMATS[:] = [f for f in _FORMATS if f.name != fmt.name]
    _FORMATS.insert(0, fmt)


def detect_format(directory: Path) -> Format:
    if not directory.is_dir():
        raise DataError(f"{directory}: no such checkpoint directory")
    _register_installed_formats()
    for fmt in _FORMATS:
        if fmt.detect(directory):
            return fmt
    known = ", ".join(f.name for f in _FORMATS)
    raise DataError(f"{directory}: not a model checkpoint of a known format ({known}); expected {CONFIG_FILE} + model.safetensors")
