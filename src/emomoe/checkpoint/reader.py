"""Read-only, memory-mapped access to a checkpoint's tensors by name, in their stored dtype.

`CheckpointReader` opens a directory of any registered format, single-file or sharded, and hands
out tensors under emomoe's names. It reads only what is asked for: a 27 GB checkpoint can be
walked one layer at a time, and `rows=` reads only some experts of a stacked expert tensor. On
opening it checks every tensor's name and shape against the model its config describes, so a
checkpoint that does not match fails here, naming the file and the tensor, and not deep inside
a forward pass.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import torch
from safetensors import SafetensorError, safe_open

from emomoe.checkpoint.formats import (
    META_FILE,
    SELECTION_FILE,
    TRAINING_SHARDS_FILE,
    EmomoeFormat,
    Format,
    TensorInfo,
    TensorSource,
    detect_format,
)
from emomoe.checkpoint.quantization import QUANTIZATION_FILE, read_quantization
from emomoe.checkpoint.writer import INDEX_FILE, SINGLE_FILE
from emomoe.errors import DataError
from emomoe.io import CHECKSUMS_FILE, has_checksums, read_json, verify_checksums
from emomoe.model import build_model
from emomoe.model.quantized import QuantizedTensor, quantized_bits

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""safetensors' dtype names (the training state's shards are written with them too)."""
_FULL_HASH_BYTES = 64 * 2**20
_SAMPLE_BLOCKS, _BLOCK_BYTES = 32, 2**20


def weight_files(directory: Path) -> dict[str, Path]:
    """File key -> the safetensors file holding it, from the index when there is one."""
    index = directory / INDEX_FILE
    if index.is_file():
        data = read_json(index)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(name, str) and Path(name).name == name for name in weight_map.values()
        ):
            raise DataError(f"{index}: not a safetensors index (expected a 'weight_map' of tensor names to file names)")
        files = {key: directory / name for key, name in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise DataError(f"{index}: names shard {path.name}, which does not exist")
            unlisted = sorted(set(_open(path).keys()) - set(files))
            if unlisted:
                raise DataError(f"{index}: does not list tensor '{unlisted[0]}', which {path.name} holds (a damaged index)")
        return files
    single = directory / SINGLE_FILE
    if not single.is_file():
        if (directory / TRAINING_SHARDS_FILE).is_file():
            raise DataError(
                f"{directory}: a sharded training checkpoint, not a model; make one with: "
                f"emomoe checkpoint consolidate {directory} --out DIR"
            )
        raise DataError(f"{directory}: no weights ({SINGLE_FILE} or {INDEX_FILE})")
    return {key: single for key in _open(single).keys()}


def verify_checkpoint(directory: Path, fmt: Format, names: list[str] | None = None) -> None:
    """Check a checkpoint's files (`names`, else all) against its checksums.sha256, which every
    checkpoint of ours carries: a missing file, or a missing line for a file it must have (config,
    weights, index, selection, quantization, meta), is an error, not a skip. Other formats (HF
    directories) are checked when they carry one."""
    if not has_checksums(directory):
        if fmt.name != EmomoeFormat.name:
            return
        raise DataError(
            f"{directory}: has no {CHECKSUMS_FILE}, which every emomoe checkpoint carries, so its files cannot be "
            f"verified (if you made it by hand, write one: cd {directory} && sha256sum {fmt.config_file} "
            f"*.safetensors > {CHECKSUMS_FILE})"
        )
    optional = (INDEX_FILE, QUANTIZATION_FILE, SELECTION_FILE, META_FILE)
    required = [fmt.config_file, *sorted(p.name for p in directory.glob("*.safetensors"))]
    required += [name for name in optional if (directory / name).is_file()]
    verify_checksums(directory, names, required=[fmt.config_file] if names is not None else required)


def _open(path: Path):
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as e:
        raise DataError(f"{path}: not a readable safetensors file ({e})") from None


def file_fingerprint(paths: Sequence[Path]) -> str:
    """sha256 identifying the contents of weight files.

    Small checkpoints are hashed whole. Beyond 64 MiB per file, the hash covers the file's size,
    its safetensors header (every name, dtype, shape and offset) and 32 evenly spaced 1 MiB blocks
    of data: enough to tell trained models apart in a second, where hashing 27 GB takes minutes.
    """
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}\n".encode())
        with open(path, "rb") as f:
            if size <= _FULL_HASH_BYTES:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
                continue
            header_len = int.from_bytes(f.read(8), "little")
            digest.update(f.read(header_len))
            for k in range(_SAMPLE_BLOCKS):
                f.seek(k * (size - _BLOCK_BYTES) // (_SAMPLE_BLOCKS - 1))
                digest.update(f.read(_BLOCK_BYTES))
    return digest.hexdigest()


class CheckpointReader:
    """A checkpoint directory's tensors under emomoe's names; see the module docstring."""

    def __init__(self, directory: str | Path, verify: bool = True):
        """`verify`: check the files against the directory's checksums.sha256, if it has one (every
        checkpoint emomoe writes does), so that a damaged file is named before it is used."""
        self.directory = Path(directory)
        self._format = detect_format(self.directory)
        if verify:
            verify_checkpoint(self.directory, self._format)
        self.format: str = self._format.name
        self.config = self._format.read_config(self.directory)
        self._files = weight_files(self.directory)
        self._handles: dict[Path, object] = {}
        infos: dict[str, TensorInfo] = {}
        for key, path in self._files.items():
            try:
                view = self._handle(path).get_slice(key)
            except SafetensorError:
                raise DataError(f"{path}: has no tensor '{key}' (named in {INDEX_FILE})") from None
            infos[key] = (tuple(view.get_shape()), SAFETENSORS_DTYPES[view.get_dtype()])
        self._infos = infos
        self.quantization = read_quantization(self.directory)
        """How the weights are stored as integers (quantization.json), None for float weights."""
        try:
            self._sources = self._format.sources(self.config, infos)
        except DataError as e:
            raise DataError(f"{self.directory}: {e}") from None
        if self.quantization is not None:
            self._sources = _pair_quantized(self._sources, self.directory)
        with torch.device("meta"):
            expected = build_model(self.config).state_dict()
        self._check(expected)

    def _check(self, expected: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(expected) - set(self._sources))
        if missing:
            raise DataError(f"{self.directory}: tensor '{missing[0]}' of the model is missing from the weights")
        unexpected = sorted(set(self._sources) - set(expected))
        if unexpected:
            raise DataError(f"{self.directory}: tensor '{unexpected[0]}' is not part of the model its config describes")
        for name, tensor in expected.items():
            if self._sources[name].quantized:
                self._check_quantized(name)
            if self.shape(name) != tuple(tensor.shape):
                source = self._sources[name].keys[0]
                raise DataError(
                    f"{self._files[source]}: tensor '{source}' has shape {list(self.shape(name))}, "
                    f"the config implies {list(tensor.shape)}"
                )

    def _check_quantized(self, name: str) -> None:
        """The integers and scales of weight `name` have the dtypes and shapes quantization.json implies."""
        group, bits = self.quantization.group_size, self._bits(name)
        qkey, skey = self._sources[name].keys
        (qshape, qdtype), (sshape, sdtype) = self._infos[qkey], self._infos[skey]
        want_q = torch.int8 if bits == 8 else torch.uint8
        inputs = qshape[-1] * 8 // bits if qshape else 0
        want_s = (*qshape[:-1], inputs // group) if qshape else None
        if qdtype != want_q or sdtype != torch.float32 or tuple(sshape) != want_s or inputs % group:
            raise DataError(
                f"{self._files[qkey]}: '{qkey}' {str(qdtype)[6:]} {list(qshape)} with '{skey}' {str(sdtype)[6:]} "
                f"{list(sshape)} is not a {bits}-bit weight in groups of {group} "
                f"(expected {str(want_q)[6:]} integers and float32 scales [..., inputs / {group}])"
            )

    def _handle(self, path: Path):
        if path not in self._handles:
            self._handles[path] = _open(path)
        return self._handles[path]

    def names(self) -> list[str]:
        return list(self._sources)

    def shape(self, name: str) -> tuple[int, ...]:
        source = self._source(name)
        shape = self._infos[source.keys[0]][0]
        if source.quantized:
            return (*shape[:-1], shape[-1] * 8 // self._bits(name))
        return (len(source.keys), *shape) if source.stacked else shape

    def dtype(self, name: str) -> torch.dtype:
        """The stored dtype; for integer weights the float dtype `get` dequantizes them to."""
        source = self._source(name)
        return self.quantization.torch_dtype if source.quantized else self._infos[source.keys[0]][1]

    def stored_bytes(self, name: str) -> int:
        """Bytes tensor `name` takes in the files (integers and scales for an integer weight)."""
        return sum(torch.Size(self._infos[key][0]).numel() * self._infos[key][1].itemsize for key in self._source(name).keys)

    def is_quantized(self, name: str) -> bool:
        return self._source(name).quantized

    def _source(self, name: str) -> TensorSource:
        try:
            return self._sources[name]
        except KeyError:
            raise KeyError(f"{self.directory}: no tensor '{name}'") from None

    def get(self, name: str, rows: Sequence[int] | None = None) -> torch.Tensor:
        """The tensor in its stored dtype (integer weights dequantized, see `dtype`); with `rows`,
        only those indices of dim 0, in that order."""
        source = self._source(name)
        if source.quantized:
            return self.get_quantized(name, rows).dequantize(self.quantization.torch_dtype)
        if source.stacked:
            keys = source.keys if rows is None else [source.keys[r] for r in rows]
            return torch.stack([self._read(key) for key in keys])
        return self._read_rows(source.keys[0], rows)

    def get_quantized(self, name: str, rows: Sequence[int] | None = None) -> QuantizedTensor:
        """Integer weight `name` as stored (see `emomoe.model.quantized`); `rows` as in `get`."""
        source = self._source(name)
        if not source.quantized:
            raise KeyError(f"{self.directory}: tensor '{name}' is not stored as integers")
        qdata, scales = (self._read_rows(key, rows) for key in source.keys)
        return QuantizedTensor(qdata, scales)  # their dtypes were checked against quantization.json

    def _bits(self, name: str) -> int:
        """The bits of integer weight `name` (the LM head may keep more than the rest)."""
        bits = quantized_bits(name, self.quantization.bits)
        if bits is None:
            raise DataError(f"{self.directory}: '{name}' is stored as integers, but is not a weight emomoe quantizes")
        return bits

    def _read_rows(self, key: str, rows: Sequence[int] | None) -> torch.Tensor:
        if rows is None:
            return self._read(key)
        return torch.cat([self._read(key, run) for run in _runs(rows)]) if len(rows) else self._read(key, (0, 0))

    def _read(self, key: str, run: tuple[int, int] | None = None) -> torch.Tensor:
        path = self._files[key]
        try:
            view = self._handle(path).get_slice(key)
            return view[:] if run is None else view[run[0] : run[1]]
        except (SafetensorError, OSError, RuntimeError) as e:
            raise DataError(f"{path}: cannot read tensor '{key}' (truncated or corrupt file? {e})") from None

    def state_dict(self, prefix: str = "", quantized: bool = False) -> dict[str, torch.Tensor | QuantizedTensor]:
        """Every tensor under `prefix`; with `quantized`, integer weights as stored (`get_quantized`)
        rather than dequantized."""
        return {
            name: self.get_quantized(name) if quantized and source.quantized else self.get(name)
            for name, source in self._sources.items()
            if name.startswith(prefix)
        }

    def fingerprint(self) -> str:
        return file_fingerprint(sorted(set(self._files.values())))

    def close(self) -> None:
        """Unmap the files; a later read reopens them. Pages read through a mapping count as this
        process's memory while it stays mapped, so a walk over a big checkpoint closes after each
        layer (a tensor still held keeps its own file mapped)."""
        self._handles.clear()

    def __enter__(self) -> CheckpointReader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _pair_quantized(sources: dict[str, TensorSource], directory: Path) -> dict[str, TensorSource]:
    """Merge each integer weight's `<name>.qdata` and `<name>.scales` into one source named `<name>`."""
    paired: dict[str, TensorSource] = {}
    for name, source in sources.items():
        base, _, part = name.rpartition(".")
        if part == "scales" and f"{base}.qdata" in sources:
            continue
        if part != "qdata":
            paired[name] = source
            continue
        scales = sources.get(f"{base}.scales")
        if scales is None:
            raise DataError(f"{directory}: integer weight '{name}' has no '{base}.scales'")
        paired[base] = TensorSource((*source.keys, *scales.keys), quantized=True)
    return paired


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive ascending indices as half-open runs: [3, 4, 5, 9, 2] -> [(3, 6), (9, 10), (2, 3)]."""
    runs: list[tuple[int, int]] = []
    for r in rows:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs
