"""`emomoe quantize`: a checkpoint or subset with its weights stored as 8- or 4-bit integers.

Streams one tensor at a time through `CheckpointReader` and `ShardedWriter`, so a checkpoint far
larger than RAM quantizes in the memory of its largest tensor: the reader's mappings are dropped
after every tensor. Which weights become integers, and how, is `emomoe.model.quantized`'s to
say. The output is an ordinary checkpoint directory (model.yaml, safetensors, checksums) plus
quantization.json, which records how it was made and what from (the tokenizer and the training
run are found through it), and a copy of the tokenizer when one is found, so that the directory
can be deployed alone. It appears atomically, or not at all.
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
from emomoe.checkpoint.quantization import FLOAT_DTYPES, QUANTIZATION_FILE, Quantization
from emomoe.checkpoint.writer import ShardSizeConfig
from emomoe.data.tokenizer import TOKENIZER_FILE
from emomoe.errors import ConfigError, DataError
from emomoe.io import atomic_path, check_output_dir, refuse_existing, write_checksums
from emomoe.model.quantized import GROUP_MULTIPLE, is_group_size, quantize, quantized_bits
from emomoe.train.provenance import find_tokenizer

DEFAULT_GROUP_SIZE = {8: 128, 4: 32}


class Bits(enum.StrEnum):
    EIGHT = "8"
    FOUR = "4"

    @classmethod
    def _missing_(cls, value: object) -> Bits | None:
        """YAML and the keyword API give the number itself."""
        is_int = isinstance(value, int) and not isinstance(value, bool)
        return cls._value2member_map_.get(str(value)) if is_int else None


@dataclasses.dataclass
class QuantizeConfig(ShardSizeConfig):
    bits: Bits = Bits.EIGHT
    """8 or 4 bits per weight of the experts and attention projections (the LM head keeps 8)."""
    group_size: int | None = None
    """Weights per scale along a matrix's inputs, a multiple of 32 (default: 128 at 8 bits, 32 at 4,
    or the largest multiple of 32 below that which divides every quantized matrix's inputs)."""

    def validate(self) -> None:
        super().validate()
        try:
            Bits(self.bits)
        except ValueError:
            raise ConfigError(f"bits: '{self.bits}' is not one of 8, 4") from None
        if self.group_size is not None and not is_group_size(self.group_size):
            raise ConfigError(f"group_size: {self.group_size} is not a positive multiple of {GROUP_MULTIPLE}")

    def group_for(self, inputs: list[int], where: str) -> int:
        """The group size for matrices with these input widths; ConfigError if none fits."""
        candidates = [self.group_size] if self.group_size else range(DEFAULT_GROUP_SIZE[int(Bits(self.bits))], 0, -GROUP_MULTIPLE)
        for group in candidates:
            if all(n % group == 0 for n in inputs):
                return group
        odd = next(n for n in inputs if n % candidates[-1])
        raise ConfigError(
            f"group_size: {candidates[-1]} does not divide the {odd} inputs of a matrix of {where}; "
            f"choose a multiple of {GROUP_MULTIPLE} that divides {sorted(set(inputs))}"
        )


def quantize_checkpoint(
    checkpoint: str | Path, out_dir: str | Path, cfg: QuantizeConfig | None = None, force: bool = False, **fields: Any
) -> Quantization:
    """Write `checkpoint` (any readable format, float weights) to `out_dir` with integer weights;
    `fields` set fields of `cfg`. Returns the record written as quantization.json."""
    cfg = (cfg or QuantizeConfig()).replace(**fields)
    bits = int(Bits(cfg.bits))
    refuse_existing(out_dir, force)
    check_output_dir(out_dir)
    with CheckpointReader(checkpoint) as reader:
        if reader.quantization is not None:
            raise DataError(f"{checkpoint}: is already quantized ({reader.quantization.bits} bits)")
        bits_of = {name: quantized_bits(name, bits) for name in reader.names()}
        names = [name for name, b in bits_of.items() if b]
        dtype = _source_dtype(reader, names, checkpoint)
        group = cfg.group_for([reader.shape(name)[-1] for name in names], str(checkpoint))
        record = Quantization(
            bits, group, dtype,
            {"source_checkpoint": str(Path(checkpoint).resolve()), "source_format": reader.format,
             "source_sha256": reader.fingerprint()},
        )
        with atomic_path(out_dir) as tmp:
            tmp.mkdir()
            with ShardedWriter(tmp, cfg.max_shard_bytes) as writer:
                for name, name_bits in bits_of.items():
                    _write(writer, name, reader.get(name), name_bits, group)
                    reader.close()  # drop the mapped pages of what was read
            reader.config.to_yaml(tmp / CONFIG_FILE)
            (tmp / QUANTIZATION_FILE).write_text(json.dumps(record.to_dict(), indent=2) + "\n")
            tokenizer = find_tokenizer(checkpoint)
            if tokenizer is not None:
                shutil.copyfile(tokenizer / TOKENIZER_FILE, tmp / TOKENIZER_FILE)
            write_checksums(tmp)
    return record


def _write(writer: ShardedWriter, name: str, tensor: torch.Tensor, bits: int | None, group_size: int) -> None:
    if bits is None:
        writer.add(name, tensor)
        return
    for key, part in quantize(tensor, bits, group_size).state(name).items():
        writer.add(key, part)


def _source_dtype(reader: CheckpointReader, names: list[str], checkpoint: str | Path) -> str:
    """The float dtype of the weights to quantize, which dequantizing restores (float32 if they differ)."""
    by_name = {dtype: name for name, dtype in FLOAT_DTYPES.items()}
    dtypes = {reader.dtype(name) for name in names}
    unknown = dtypes - set(by_name)
    if unknown:
        raise DataError(f"{checkpoint}: cannot quantize weights of dtype {min(map(str, unknown))}")
    return by_name[dtypes.pop()] if len(dtypes) == 1 else "float32"
