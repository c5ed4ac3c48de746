"""Model checkpoints: a directory with the weights and the config that describes them.

Our own format is `model.yaml` plus `model.safetensors` (or shards with an index); every consumer
of a trained model (selection, evaluation, generation, the HF converter) reads through
`CheckpointReader`, so models trained here, sliced subsets and imported models load alike.
Trainer state (optimizer, data loader, RNG) is the trainer's business and lives beside it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emomoe.checkpoint.formats import CONFIG_FILE, META_FILE, detect_format
from emomoe.checkpoint.reader import CheckpointReader, file_fingerprint, verify_checkpoint, weight_files
from emomoe.checkpoint.writer import DEFAULT_MAX_SHARD_BYTES, SINGLE_FILE, ShardedWriter
from emomoe.errors import ConfigError, DataError
from emomoe.io import atomic_path, write_checksums
from emomoe.model.config import ModelConfig
from emomoe.model.from_weights import model_from_weights
from emomoe.model.quantized import QuantizedTensor, QuantizedWeight

WEIGHTS_FILE = SINGLE_FILE
INFERENCE_OVERRIDES = ["moe.router.eval_pool=off"]
"""Config changes for inference: no document pool (see `load_for_inference`)."""


def save_model(
    directory: str | Path,
    model: nn.Module,
    cfg: ModelConfig,
    meta: dict[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """Write the model's weights and config to `directory` atomically (replacing what was there),
    with checksums.sha256, which every reader verifies."""
    if any(isinstance(module, QuantizedWeight) for module in model.modules()):
        raise ValueError("a model with integer weights is written by `emomoe quantize`, not save_model")
    return save_weights(directory, model.state_dict().items(), cfg, meta, max_shard_bytes)


def save_weights(
    directory: str | Path,
    weights: Iterable[tuple[str, torch.Tensor]],
    cfg: ModelConfig,
    meta: dict[str, Any] | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> Path:
    """`save_model` for (name, tensor) pairs made one at a time: memory stays near one shard."""
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        with ShardedWriter(tmp, max_shard_bytes) as writer:
            for name, tensor in weights:
                writer.add(name, tensor)
        cfg.to_yaml(tmp / CONFIG_FILE)
        if meta is not None:
            (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        write_checksums(tmp)
    return directory


def load_config(directory: str | Path) -> ModelConfig:
    """The config of a checkpoint of any readable format, without opening its weights."""
    directory = Path(directory)
    fmt = detect_format(directory)
    verify_checkpoint(directory, fmt, [fmt.config_file])
    return fmt.read_config(directory)


def load_model(
    directory: str | Path,
    device: str | torch.device = "cpu",
    overrides: list[str] | None = None,
    dtype: torch.dtype | str | None = None,
    quantized: bool = False,
) -> tuple[nn.Module, ModelConfig]:
    """Build the model a checkpoint describes and load its weights (names and shapes checked).

    `overrides` are dotted config changes that leave the weights alone (e.g. the router's pool).
    `dtype`: None loads float32, the dtype emomoe computes in; "stored" keeps the files' dtype.
    `quantized`: integer weights stay integers (inference); otherwise they are dequantized, so
    that what trains or rewrites weights gets floats.
    """
    with CheckpointReader(directory) as reader:
        cfg = reader.config.with_overrides(overrides) if overrides else reader.config
        state = reader.state_dict(quantized=quantized)
    target = None if dtype == "stored" else (dtype or torch.float32)
    if target is not None:
        state = {k: _to(v, target) for k, v in state.items()}
    return model_from_weights(cfg, state).to(device), cfg


def _to(tensor: torch.Tensor | QuantizedTensor, dtype: torch.dtype) -> torch.Tensor | QuantizedTensor:
    """Float tensors in `dtype`; integer weights and other tensors as they are."""
    return tensor.to(dtype) if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() else tensor


def load_for_inference(directory: str | Path, dtype: torch.dtype | str | None = None) -> tuple[nn.Module, ModelConfig]:
    """`load_model` in eval mode with no document pool.

    Every number in the paper, for full models and subsets alike, comes from pool-free routing
    (the HF inference behaviour); an EMO checkpoint may have been trained with an eval-mode pool
    for its in-loop validation, which must not leak into selection or held-out evaluation.

    `dtype="auto"`: float32 weights if they take at most half the memory available, otherwise the
    stored dtype, still computing in float32: each matrix is read as stored where it is used
    (`emomoe.model.linear`), so a bf16 subset of a big model runs in half the memory and decodes
    reading half the bytes. Otherwise as in `load_model`. Integer weights (`emomoe quantize`)
    stay integers, whatever `dtype`: the matmuls read them as stored.
    """
    if dtype != "auto":
        model, cfg = load_model(directory, overrides=INFERENCE_OVERRIDES, dtype=dtype, quantized=True)
        return model.eval(), cfg
    model, cfg = load_model(directory, overrides=INFERENCE_OVERRIDES, dtype="stored", quantized=True)
    fp32_bytes = sum(t.numel() * 4 for t in model.state_dict().values() if t.is_floating_point())
    if fp32_bytes <= available_memory() // 2:
        model.float()
    return model.eval(), cfg


def available_memory() -> int:
    """Bytes of memory the system can give without swapping (MemAvailable: free plus reclaimable cache)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_fits(
    cfg: ModelConfig,
    checkpoint: str | Path,
    *,
    vocab_size: int,
    seq_len: int,
    tokenizer_hash: str | None = None,
    any_tokenizer: bool = False,
) -> None:
    """Raise unless windows of `seq_len` tokens from a `vocab_size` vocabulary fit the model, and
    the data's tokenizer (`tokenizer_hash`, when known) is the one the model was trained with
    (`ModelConfig.check_tokenizer`).
    """
    cfg.check_tokenizer(tokenizer_hash, checkpoint, any_tokenizer=any_tokenizer)
    if vocab_size > cfg.vocab_size:
        raise DataError(
            f"{checkpoint}: the data's vocabulary ({vocab_size}) is larger than the model's ({cfg.vocab_size})"
        )
    if seq_len > cfg.max_seq_len:
        raise ConfigError(f"seq_len: {seq_len} exceeds {checkpoint}'s max_seq_len {cfg.max_seq_len}")


def checkpoint_hash(directory: str | Path) -> str:
    """Identifies the exact weights of a checkpoint (see `file_fingerprint`): the source hash of
    derived models."""
    return file_fingerprint(sorted(set(weight_files(Path(directory)).values())))
