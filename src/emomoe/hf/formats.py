"""Hugging Face checkpoint directories as checkpoint formats: every verb that reads a checkpoint
(`eval`, `select`, `sweep`, `finetune`, `generate`, `analyze`, `hf export`) reads them directly.

One format per layout ("hf-emo", "hf-olmo2_noqknorm_prenorm", "hf-olmoe", "hf-mixtral"), recognised
by `model_type` in `config.json`; a directory with a `config.json` of any other model_type gets an
error naming it.
`register_hf_formats` is the `emomoe.checkpoint_formats` entry point (pyproject.toml): the checkpoint
reader calls it before it detects its first directory. This module imports no transformers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from emomoe.checkpoint import CONFIG_FILE, TensorSource, register_format
from emomoe.checkpoint.formats import TensorInfo
from emomoe.checkpoint.reader import weight_files
from emomoe.errors import DataError
from emomoe.hf.config_json import CONFIG_JSON, model_config, read_config_json
from emomoe.hf.layouts import LAYOUTS, Layout, tensor_keys
from emomoe.model.config import ModelConfig

LM_HEAD = "lm_head.weight"
IGNORED_KEY_SUFFIXES = (".rotary_emb.inv_freq",)
"""Buffers some older checkpoints saved; we recompute them."""


def _model_type(directory: Path) -> str | None:
    """model_type of a HF checkpoint directory (not one of ours), or None."""
    path = directory / CONFIG_JSON
    if (directory / CONFIG_FILE).is_file() or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    return data.get("model_type", "") if isinstance(data, dict) else ""


class HFFormat:
    def __init__(self, layout: Layout):
        self.layout = layout
        self.name = f"hf-{layout.model_type}"
        self.config_file = CONFIG_JSON

    def detect(self, directory: Path) -> bool:
        return _model_type(directory) == self.layout.model_type

    def read_config(self, directory: Path) -> ModelConfig:
        data = read_config_json(directory / CONFIG_JSON)
        cfg = model_config(data, directory / CONFIG_JSON)
        # Every layout we read defaults to an LM head of its own: without one, transformers leaves it random.
        if data.get("tie_word_embeddings") is not True and LM_HEAD not in weight_files(directory):
            raise DataError(
                f"{directory}: the weights have no '{LM_HEAD}', and {CONFIG_JSON} does not tie it to the embedding "
                f"(tie_word_embeddings: {json.dumps(data.get('tie_word_embeddings', False))}); transformers would "
                "leave the head random"
            )
        return cfg

    def sources(self, cfg: ModelConfig, keys: Mapping[str, TensorInfo]) -> dict[str, TensorSource]:
        expected = tensor_keys(cfg, self.layout, tied=LM_HEAD not in keys)
        sources: dict[str, TensorSource] = {}
        for name, where in expected.items():
            rows = (where,) if isinstance(where, str) else where
            for key in rows:
                if key not in keys:
                    raise DataError(f"the weights have no tensor '{key}' (the config implies it)")
                if keys[key][0] != keys[rows[0]][0]:
                    shapes = list(keys[key][0]), list(keys[rows[0]][0])
                    raise DataError(f"tensor '{key}' has shape {shapes[0]}, '{rows[0]}' has {shapes[1]}")
            sources[name] = TensorSource.whole(where) if isinstance(where, str) else TensorSource.rows(list(where))
        used = {key for source in sources.values() for key in source.keys}
        unknown = sorted(k for k in keys if k not in used and not k.endswith(IGNORED_KEY_SUFFIXES))
        if unknown:
            model_type = self.layout.model_type
            raise DataError(f"tensor '{unknown[0]}' is not part of the {model_type} model its config describes")
        return sources


class UnsupportedHFFormat:
    """Any other `config.json`: tried after the known layouts, it only reports the model_type.
    Its `read_config` always raises, so a reader never asks it for sources."""

    name = "hf"
    config_file = CONFIG_JSON

    def detect(self, directory: Path) -> bool:
        return _model_type(directory) is not None

    def read_config(self, directory: Path) -> ModelConfig:
        path = directory / CONFIG_JSON
        model_type = read_config_json(path).get("model_type")
        raise DataError(
            f"{path}: model_type {model_type!r} is not a layout emomoe reads "
            f"(expected one of {', '.join(sorted(LAYOUTS))})"
        )


def register_hf_formats() -> None:
    register_format(UnsupportedHFFormat())
    for layout in LAYOUTS.values():
        register_format(HFFormat(layout))
