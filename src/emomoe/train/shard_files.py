"""A `torch.distributed.checkpoint` storage layer without pickle: each rank's chunks in one
safetensors file, the index in JSON.

DCP plans a sharded save and load: which rank writes which chunk of every tensor (its own shard of
each DTensor; one rank for each replicated tensor), and which parts of which saved chunks a rank
needs when the world size has changed. Its stock files are read back with pickle (the `.metadata`
index with `pickle.load`, every tensor with `torch.load`), so this layer writes its own:

    state-00001-of-00004.safetensors   rank 1's chunks, streamed to disk one at a time: a plain
                                       safetensors file, one entry per chunk, keyed "NAME@OFFSETS"
    shards.json                        each tensor's dtype, global shape and chunks (offsets, sizes,
                                       and the file and key that hold it)

Loading parses JSON and reads memory-mapped safetensors slices, neither of which can run code,
and a rank reads only the parts of saved chunks that its own shards overlap. Only tensors are
stored: DCP pickles any other value, so one is refused when saving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch.distributed.checkpoint import StorageReader, StorageWriter
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, SavePlan, SavePlanner, WriteItemType
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from emomoe.checkpoint.formats import TRAINING_SHARDS_FILE
from emomoe.checkpoint.reader import SAFETENSORS_DTYPES
from emomoe.errors import DataError

INDEX_FILE = TRAINING_SHARDS_FILE
FORMAT = "emomoe-sharded-state-v1"
_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


def shard_file(rank: int, world_size: int) -> str:
    return f"state-{rank:05d}-of-{world_size:05d}.safetensors"


@dataclasses.dataclass(frozen=True)
class Chunk:
    """A saved block of a tensor: where it sits in the whole tensor, and where it is stored."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    key: str


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: tuple[Chunk, ...]


def read_index(directory: str | Path) -> dict[str, StoredTensor]:
    """Every tensor of a sharded state by its flattened name (`model.embed.weight`); DataError
    naming the file if the index is missing or is not one of ours."""
    path = Path(directory) / INDEX_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise DataError(
                f"{path}: not a sharded training state index (format {data.get('format')!r}, expected {FORMAT})"
            )
        return {
            name: StoredTensor(
                SAFETENSORS_DTYPES[entry["dtype"]],
                tuple(entry["shape"]),
                tuple(Chunk(tuple(c["offsets"]), tuple(c["sizes"]), c["file"], c["key"]) for c in entry["chunks"]),
            )
            for name, entry in data["tensors"].items()
        }
    except FileNotFoundError:
        raise DataError(f"{path}: not found (is {directory} a sharded training checkpoint?)") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: damaged shard index ({type(e).__name__}: {e})") from None


def block(offsets: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[slice, ...]:
    """The index of the block of a tensor at `offsets` with `sizes`."""
    return tuple(slice(o, o + n) for o, n in zip(offsets, sizes))


class ChunkFiles:
    """The safetensors files of a sharded state, each opened (memory-mapped) when first read."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._handles: dict[str, Any] = {}
        self._stack = contextlib.ExitStack()

    def read(
        self, chunk: Chunk, offsets: tuple[int, ...] | None = None, lengths: tuple[int, ...] | None = None
    ) -> torch.Tensor:
        """The chunk, or the block of it at `offsets` (relative to the chunk) of `lengths`."""
        handle = self._handles.get(chunk.file)
        path = self.directory / chunk.file
        try:
            if handle is None:
                handle = self._handles[chunk.file] = self._stack.enter_context(safe_open(str(path), framework="pt"))
            if offsets is None or not chunk.sizes:
                return handle.get_tensor(chunk.key)
            return handle.get_slice(chunk.key)[block(offsets, lengths)]
        except (SafetensorError, OSError) as e:
            raise DataError(f"{path}: cannot read chunk {chunk.key} ({e})") from None

    def __enter__(self) -> ChunkFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


class ShardWriter(StorageWriter):
    """Writes a DCP save into `directory` (which exists), as described in the module docstring."""

    def __init__(self, directory: str | Path):
        super().__init__()
        self.directory = Path(directory)

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        pass

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        pass

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        return [dataclasses.replace(plan, storage_data=shard_file(rank, len(plans))) for rank, plan in enumerate(plans)]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        future: Future[list[WriteResult]] = Future()
        future.set_result(_write_chunks(self.directory / plan.storage_data, plan, planner))
        return future

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        chunks: dict[str, list[Chunk]] = {}
        for result in (r for rank in results for r in rank):
            chunks.setdefault(result.index.fqn, []).append(result.storage_data)
        tensors = {
            name: {
                "dtype": _DTYPE_NAMES[md.properties.dtype],
                "shape": list(md.size),
                "chunks": [dataclasses.asdict(c) for c in sorted(chunks[name], key=lambda c: c.offsets)],
            }
            for name, md in metadata.state_dict_metadata.items()
        }
        (self.directory / INDEX_FILE).write_text(json.dumps({"format": FORMAT, "tensors": tensors}) + "\n")

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return Path(checkpoint_id).is_dir()


def _write_chunks(path: Path, plan: SavePlan, planner: SavePlanner) -> list[WriteResult]:
    """One safetensors file of the plan's chunks. The header is known from the plan, so each chunk
    goes to disk as soon as it is resolved: no copy of the rank's state is ever built."""
    header, results, offset = {}, [], 0
    for item in plan.items:
        if item.type is WriteItemType.BYTE_IO:
            raise TypeError(f"{item.index.fqn}: not a tensor; a sharded training state stores tensors only")
        extent, dtype = item.tensor_data.chunk, item.tensor_data.properties.dtype
        key = f"{item.index.fqn}@{','.join(map(str, extent.offsets))}"
        nbytes = math.prod(extent.sizes) * dtype.itemsize
        header[key] = {
            "dtype": _DTYPE_NAMES[dtype], "shape": list(extent.sizes), "data_offsets": [offset, offset + nbytes]
        }
        chunk = Chunk(tuple(extent.offsets), tuple(extent.sizes), path.name, key)
        results.append(WriteResult(index=item.index, size_in_bytes=nbytes, storage_data=chunk))
        offset += nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)  # safetensors aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for item, result in zip(plan.items, results):
            flat = planner.resolve_data(item).detach().cpu().contiguous().reshape(-1).view(torch.uint8)
            if flat.numel() != result.size_in_bytes:
                raise RuntimeError(f"{item.index.fqn}: resolved {flat.numel()} bytes, planned {result.size_in_bytes}")
            f.write(flat.numpy().data)
        f.flush()
        os.fsync(f.fileno())
    return results


class ShardReader(StorageReader):
    """Reads what `ShardWriter` wrote, given its parsed index (`read_index`, so a damaged index
    is a DataError before DCP starts)."""

    def __init__(self, directory: str | Path, index: dict[str, StoredTensor]):
        super().__init__()
        self.directory = Path(directory)
        self.index = index
        self.chunks: dict[MetadataIndex, Chunk] = {}

    def reset(self, checkpoint_id: str | os.PathLike | None = None) -> None:
        pass

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        state, storage = {}, {}
        for name, tensor in self.index.items():
            blocks = [ChunkStorageMetadata(torch.Size(c.offsets), torch.Size(c.sizes)) for c in tensor.chunks]
            state[name] = TensorStorageMetadata(TensorProperties(dtype=tensor.dtype), torch.Size(tensor.shape), blocks)
            storage.update({MetadataIndex(name, c.offsets): c for c in tensor.chunks})
        return Metadata(state_dict_metadata=state, storage_data=storage)

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        self.chunks = metadata.storage_data

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return plans

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        with ChunkFiles(self.directory) as files:
            for item in plan.items:
                block = files.read(self.chunks[item.storage_index], tuple(item.storage_offsets), tuple(item.lengths))
                target = planner.resolve_tensor(item).detach()
                target.copy_(block)
                planner.commit_tensor(item, target)
        future: Future[None] = Future()
        future.set_result(None)
        return future

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike) -> bool:
        return (Path(checkpoint_id) / INDEX_FILE).is_file()
