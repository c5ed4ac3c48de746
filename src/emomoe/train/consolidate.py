"""A sharded training checkpoint as a model checkpoint: `emomoe checkpoint consolidate`.

An FSDP run's checkpoints hold each rank's shards (`train.checkpointing`); every verb that reads a
model wants our model format. Consolidating assembles one tensor at a time from its chunks (read
memory-mapped from the rank files) and streams it into the model writer, so memory stays near one
output shard (`max_shard_size`) plus the largest tensor, not the model: a machine smaller than the
model does it. The optimizer's moments stay behind. The result is what a run's `final/` is:
`model.yaml`, safetensors, `meta.json` (step, tokens) and `checksums.sha256`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from emomoe.checkpoint import load_config, save_weights
from emomoe.checkpoint.writer import ShardSizeConfig
from emomoe.errors import DataError
from emomoe.io import check_output_dir, refuse_existing, verify_checksums
from emomoe.model import build_model
from emomoe.model.config import ModelConfig
from emomoe.train.checkpointing import load_trainer_state
from emomoe.train.shard_files import INDEX_FILE, ChunkFiles, StoredTensor, block, read_index
from emomoe.train.sharded import MODEL_PREFIX


@dataclasses.dataclass
class ConsolidateConfig(ShardSizeConfig):
    """The settings of `consolidate`: how the model's weights are sharded (and so the memory it takes)."""


def consolidate(
    checkpoint: str | Path, out: str | Path, cfg: ConsolidateConfig | None = None, *, force: bool = False,
    **fields: Any,
) -> Path:
    """Write the model of the sharded training checkpoint `checkpoint` (RUN/checkpoints/step-N) as a
    model checkpoint at `out`. `fields` set fields of `cfg` (default: `ConsolidateConfig()`)."""
    cfg = (cfg or ConsolidateConfig()).replace(**fields)
    checkpoint, out = Path(checkpoint), Path(out)
    if out.resolve() == checkpoint.resolve():
        raise DataError(f"{out}: is the checkpoint being consolidated; write somewhere else")
    check_output_dir(out)
    refuse_existing(out, force)
    if not (checkpoint / INDEX_FILE).is_file():
        raise DataError(
            f"{checkpoint}: not a sharded training checkpoint (no {INDEX_FILE}); checkpoints of single-process "
            "and DDP runs are model checkpoints already"
        )
    verify_checksums(checkpoint)
    model_cfg = load_config(checkpoint)
    stored = _model_tensors(checkpoint, model_cfg)
    state = load_trainer_state(checkpoint)
    meta = {"step": state["step"], "tokens": state["tokens_seen"]}
    with ChunkFiles(checkpoint) as files:
        weights = ((name, _assemble(files, tensor)) for name, tensor in stored.items())
        return save_weights(out, weights, model_cfg, meta, cfg.max_shard_bytes)


def _model_tensors(checkpoint: Path, model_cfg: ModelConfig) -> dict[str, StoredTensor]:
    """The stored model tensors in the model's own order; DataError naming the first that is missing
    or has another shape than `model.yaml` describes."""
    with torch.device("meta"):
        expected = build_model(model_cfg).state_dict()
    index = read_index(checkpoint)
    stored = {}
    for name, tensor in expected.items():
        found = index.get(f"{MODEL_PREFIX}.{name}")
        if found is None or found.shape != tuple(tensor.shape):
            shape = "missing" if found is None else f"shape {list(found.shape)}"
            raise DataError(f"{checkpoint / INDEX_FILE}: {name} is {shape}, the model needs {list(tensor.shape)}")
        stored[name] = found
    return stored


def _assemble(files: ChunkFiles, tensor: StoredTensor) -> torch.Tensor:
    whole = torch.empty(tensor.shape, dtype=tensor.dtype)
    for chunk in tensor.chunks:
        whole[block(chunk.offsets, chunk.sizes)] = files.read(chunk)
    return whole
