"""Checkpoints on disk: model checkpoints of every readable format, read lazily and written in shards.

- `models`: save, load and identify whole models (`save_model`, `save_weights`, `load_model`,
  `load_for_inference`);
- `reader`: `CheckpointReader`, memory-mapped access to one tensor (or some experts) at a time;
- `writer`: `ShardedWriter`, safetensors shards with the HF index;
- `formats`: how a directory's layout maps onto our names; other layouts `register_format`.
"""

from emomoe.checkpoint.formats import CONFIG_FILE, Format, TensorSource, register_format
from emomoe.checkpoint.models import (
    INFERENCE_OVERRIDES,
    META_FILE,
    WEIGHTS_FILE,
    check_fits,
    checkpoint_hash,
    load_config,
    load_for_inference,
    load_model,
    save_model,
    save_weights,
)
from emomoe.checkpoint.reader import CheckpointReader
from emomoe.checkpoint.writer import INDEX_FILE, ShardedWriter

__all__ = [
    "CONFIG_FILE",
    "INDEX_FILE",
    "INFERENCE_OVERRIDES",
    "META_FILE",
    "WEIGHTS_FILE",
    "CheckpointReader",
    "Format",
    "ShardedWriter",
    "TensorSource",
    "check_fits",
    "checkpoint_hash",
    "load_config",
    "load_for_inference",
    "load_model",
    "register_format",
    "save_model",
    "save_weights",
]
