"""Hugging Face checkpoints in and out: `import_hf` writes one of ours, `export_hf` an EMO one.

Both stream through `CheckpointReader` and `ShardedWriter`, one tensor at a time, in the stored
dtype (or the `dtype` asked for), so memory stays near one shard. Both check everything they can
before writing and make the output directory appear atomically.

An import keeps the HF `config.json` as `hf_config.json` beside our `model.yaml`, with the
tokenizer and generation files: an export of the imported model writes the same tensors (bit for
bit), the same tokenizer files and the same config fields, and keeps fields emomoe does not model
(for example `router_aux_loss_coef`). Like every checkpoint of ours, an import records the hash of
its tokenizer (when the HF directory ships one) in `model.yaml`, and carries `checksums.sha256`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from emomoe.checkpoint import CONFIG_FILE, CheckpointReader, ShardedWriter
from emomoe.checkpoint.selection import lineage
from emomoe.checkpoint.writer import ShardSizeConfig
from emomoe.data.tokenizer import TOKENIZER_FILE, load_model_tokenizer
from emomoe.data.windows import TokenizerCheckConfig
from emomoe.errors import DataError
from emomoe.hf.config_json import CONFIG_JSON, check_exportable, emo_config_json, read_config_json
from emomoe.hf.layouts import EMO, tensor_keys
from emomoe.hf.tokenizer_files import carry_files, find_export_tokenizer, write_tokenizer_files
from emomoe.io import atomic_path, refuse_existing, write_checksums

HF_CONFIG_COPY = "hf_config.json"
REMOTE_DIR = Path(__file__).parent / "remote"
REMOTE_FILES = ("configuration_emo.py", "modeling_emo.py")


class ExportDtype(enum.StrEnum):
    STORED = "stored"
    """Keep the checkpoint's own dtype."""
    FLOAT32 = "float32"
    """float32: the weights as they are computed with."""
    BFLOAT16 = "bfloat16"
    """bfloat16: half the size, the dtype of the released EMO checkpoints."""
    FLOAT16 = "float16"
    """float16: half the size, for hardware without bfloat16."""


DTYPES = {ExportDtype.STORED: None, ExportDtype.FLOAT32: torch.float32, ExportDtype.BFLOAT16: torch.bfloat16,
          ExportDtype.FLOAT16: torch.float16}


@dataclasses.dataclass
class ImportConfig(ShardSizeConfig):
    """The settings of `import_hf`: how the weights are sharded."""


@dataclasses.dataclass
class ExportConfig(ImportConfig, TokenizerCheckConfig):
    dtype: ExportDtype = ExportDtype.STORED
    """The weights' dtype in the export."""

    def __post_init__(self) -> None:
        self.dtype = ExportDtype(self.dtype)


def _check_out(out: Path, force: bool, source: Path) -> None:
    if out.resolve() == source.resolve():
        raise DataError(f"{out}: is the checkpoint being converted; write somewhere else")
    refuse_existing(out, force)


def import_hf(
    hf_dir: str | Path, out: str | Path, cfg: ImportConfig | None = None, *, force: bool = False, **fields: Any
) -> Path:
    """Convert a Hugging Face checkpoint directory (EMO, the EMO release's dense baseline,
    OLMoE or Mixtral) into one of ours at `out`.
    `fields` set fields of `cfg` (default: `ImportConfig()`)."""
    cfg = (cfg or ImportConfig()).replace(**fields)
    hf_dir, out = Path(hf_dir), Path(out)
    _check_out(out, force, hf_dir)
    with CheckpointReader(hf_dir) as reader:
        if not reader.format.startswith("hf-"):
            raise DataError(f"{hf_dir}: an emomoe checkpoint, not a Hugging Face one ({CONFIG_JSON}); use it as it is")
        model_cfg = reader.config
        if (hf_dir / TOKENIZER_FILE).is_file():
            # Recorded like a token store's: every later verb checks data and tokenizers against it.
            tok = load_model_tokenizer(hf_dir / TOKENIZER_FILE, model_cfg)
            model_cfg = dataclasses.replace(model_cfg, tokenizer_hash=tok.hash)
        with atomic_path(out) as tmp:
            tmp.mkdir()
            with ShardedWriter(tmp, cfg.max_shard_bytes) as writer:
                for name in reader.names():
                    writer.add(name, reader.get(name))
            model_cfg.to_yaml(tmp / CONFIG_FILE)
            shutil.copyfile(hf_dir / CONFIG_JSON, tmp / HF_CONFIG_COPY)
            carry_files(hf_dir, tmp)
            write_checksums(tmp)
    return out


def _base_config(dirs: list[Path]) -> dict[str, Any] | None:
    """The HF config.json the model (or the model it was sliced from) came with, if an EMO one:
    imported (our copy) or read as it is."""
    for directory in dirs:
        for name in (HF_CONFIG_COPY, CONFIG_JSON):
            if (directory / name).is_file():
                data = read_config_json(directory / name)
                return data if data.get("model_type") == EMO.model_type else None
    return None


def export_hf(
    checkpoint: str | Path,
    out: str | Path,
    cfg: ExportConfig | None = None,
    *,
    tokenizer: str | Path | None = None,
    force: bool = False,
    **fields: Any,
) -> Path:
    """Write `checkpoint` (ours, a subset, or any readable HF one) to `out` in the official EMO layout.

    `out` gets `config.json` (with `auto_map`), our `configuration_emo.py` / `modeling_emo.py`,
    the weights (in the dtype and shards `cfg` asks for), the tokenizer files and
    `generation_config.json`. `fields` set fields of `cfg` (default: `ExportConfig()`).
    """
    export = (cfg or ExportConfig()).replace(**fields)
    checkpoint, out = Path(checkpoint), Path(out)
    _check_out(out, force, checkpoint)
    with CheckpointReader(checkpoint) as reader:
        cfg = reader.config
        check_exportable(cfg)
        dirs = lineage(checkpoint)
        tokenizer_file = find_export_tokenizer(tokenizer, dirs)
        tok = load_model_tokenizer(tokenizer_file, cfg, any_tokenizer=export.any_tokenizer)
        target = DTYPES[export.dtype]
        stored_dtype = target or reader.dtype("embed.weight")
        with atomic_path(out) as tmp:
            tmp.mkdir()
            pad = write_tokenizer_files(tmp, tokenizer_file, tok, cfg)
            with ShardedWriter(tmp, export.max_shard_bytes) as writer:
                for name, keys in tensor_keys(cfg, EMO).items():
                    tensor = reader.get(name)
                    tensor = tensor if target is None else tensor.to(target)
                    if isinstance(keys, str):
                        writer.add(keys, tensor)
                    else:
                        for key, row in zip(keys, tensor):
                            writer.add(key, row)
            dtype_name = str(stored_dtype).removeprefix("torch.")
            config = emo_config_json(cfg, eos_id=tok.eos_id, pad_id=pad, dtype=dtype_name, base=_base_config(dirs))
            (tmp / CONFIG_JSON).write_text(json.dumps(config, indent=2) + "\n")
            for name in REMOTE_FILES:
                shutil.copyfile(REMOTE_DIR / name, tmp / name)
    return out
