"""Writing tensors as (sharded) safetensors files, one shard's worth of memory at a time.

The file names follow the Hugging Face convention, so the same writer serves our checkpoints and
HF exports: one `model.safetensors` when everything fits in one shard, otherwise
`model-0000k-of-0000N.safetensors` plus `model.safetensors.index.json`, which maps every tensor
name to its shard.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
from pathlib import Path
from types import TracebackType

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from emomoe.config import Config
from emomoe.errors import ConfigError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
"""The shard limit transformers' `save_pretrained` uses (5 GB)."""
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str, name: str = "max_shard_size") -> int:
    """Bytes in "5GB", "500MB", "2GiB" or "1000000" (the notation of transformers' max_shard_size);
    a ConfigError names the field `name`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text, flags=re.IGNORECASE)
    if not match or int(float(match[1]) * _UNITS[(match[2] or "").upper()]) < 1:
        raise ConfigError(f"{name}: '{text}': expected a size like 5GB, 500MB or 2GiB")
    return int(float(match[1]) * _UNITS[(match[2] or "").upper()])


@dataclasses.dataclass
class ShardSizeConfig(Config):
    """The setting of every verb that writes weights with `ShardedWriter`."""

    max_shard_size: int | str = DEFAULT_MAX_SHARD_BYTES
    """Largest safetensors shard: bytes, or a size like 5GB, 500MB, 2GiB; above it the weights are
    sharded, with an index file."""

    def validate(self) -> None:
        parse_size(str(self.max_shard_size))

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(str(self.max_shard_size))


def shard_name(index: int, count: int) -> str:
    return f"model-{index:05d}-of-{count:05d}.safetensors"


class ShardedWriter:
    """Collect tensors and write them as safetensors shards into an existing directory.

    `add` buffers a tensor and flushes the buffer as a shard once the next tensor would push it
    past `max_shard_bytes` (a single larger tensor gets a shard of its own). `close` gives the
    shards their final names and writes the index. The caller makes the directory atomic.
    """

    def __init__(
        self,
        directory: str | Path,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        metadata: dict[str, str] | None = None,
    ):
        if max_shard_bytes < 1:
            raise ValueError(f"max_shard_bytes: {max_shard_bytes} must be >= 1")
        self.directory = Path(directory)
        self.max_shard_bytes = max_shard_bytes
        # transformers refuses safetensors files whose "format" is not a framework it knows.
        self.metadata = {"format": "pt", **(metadata or {})}
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffered_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._names: set[str] = set()
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise ValueError(f"tensor '{name}' was already written")
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffered_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        tensor = tensor.detach().contiguous()
        if tensor.untyped_storage().nbytes() != nbytes:
            # A view into a larger tensor (one expert of a stacked bank): safetensors stores
            # whole storages, and refuses two names sharing one.
            tensor = tensor.clone()
        self._names.add(name)
        self._buffer[name] = tensor
        self._buffered_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        path = self.directory / f".shard-{len(self._shards):05d}.partial"
        try:
            save_file(self._buffer, str(path), metadata=self.metadata)
        except SafetensorError as e:
            # safetensors reports a failed write (a full disk) as its own error type; callers
            # handle I/O errors as OSError, with the errno the system gave.
            code = re.search(r"os error (\d+)", str(e))
            raise OSError(int(code.group(1)) if code else errno.EIO, str(e), str(path)) from e
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffered_bytes = {}, 0

    def close(self) -> list[Path]:
        """Write what is buffered, name the shards, write the index; return the files written."""
        if self._buffer or not self._shards:
            self._flush()
        if len(self._shards) == 1:
            final = self.directory / SINGLE_FILE
            os.replace(self._shards[0][0], final)
            return [final]
        files, weight_map = [], {}
        for k, (path, names) in enumerate(self._shards, start=1):
            final = self.directory / shard_name(k, len(self._shards))
            os.replace(path, final)
            files.append(final)
            weight_map.update(dict.fromkeys(names, final.name))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return [*files, self.directory / INDEX_FILE]

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.close()
        else:
            for path, _ in self._shards:
                path.unlink(missing_ok=True)
