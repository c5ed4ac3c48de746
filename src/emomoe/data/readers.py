"""Stream labelled documents out of jsonl (plain, .gz, .zst), parquet, .txt folders and HF datasets.

`DocumentSource(inputs, ...)` is re-iterable: each pass streams the files again, one document at
a time, so a corpus larger than memory works and the tokenizer can scan it before it encodes it.
Every document is a dict {"text", "domain", "source"}, like the embedded corpus.

Where the domain comes from: `domain=` (a fixed label) wins; else the `domain_field` of a jsonl
record / parquet row / dataset row; for .txt files (one document per file), the first subfolder
below the input folder (`corpus/legal/gpl.txt` -> "legal"), or the name of the file's folder.

Policy for imperfect input:
- empty or whitespace-only documents are skipped and counted;
- documents that are not valid UTF-8 are skipped and counted (`InvalidText.SKIP`, the default),
  kept with each bad sequence replaced by U+FFFD (`REPLACE`), or stop the run (`ERROR`);
- a missing text or domain field, a malformed line, a truncated archive or an unreadable file
  raise `DataError` naming the file (and line or row).
After each complete pass the counts are in `source.stats`; the first pass logs one warning.
A pass that finds no document at all raises `DataError`.
"""

from __future__ import annotations

import dataclasses
import enum
import gzip
import logging
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypedDict

import zstandard

from emomoe.config import Config
from emomoe.errors import DataError, optional_import
from emomoe.io import parse_json

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
SUPPORTED = (*JSONL_SUFFIXES, ".parquet", ".txt")
_HF_MARKERS = ("dataset_dict.json", "state.json")
_ROWS_PER_BATCH = 1024
_READ_BYTES = 1 << 20
_SURROGATE = re.compile("[\ud800-\udfff]")


class Document(TypedDict):
    text: str
    domain: str
    source: str


class InvalidText(enum.StrEnum):
    """What to do with a document whose bytes are not valid UTF-8."""

    SKIP = "skip"
    """Drop the document and count it (default)."""
    REPLACE = "replace"
    """Keep the document; each invalid sequence becomes U+FFFD."""
    ERROR = "error"
    """Stop with an error naming the file."""


@dataclasses.dataclass
class ReadConfig(Config):
    text_field: str = "text"
    """Field or column holding the text."""
    domain_field: str = "domain"
    """Field or column holding the domain label."""
    domain: str | None = None
    """Label every document with this domain; None means the domain field (for .txt files, the
    subfolder below the input folder)."""
    invalid_text: InvalidText = InvalidText.SKIP
    """Documents that are not valid UTF-8: skip and count them, replace the bad bytes with U+FFFD, or
    stop with an error. Empty documents are always skipped and counted."""

    def __post_init__(self) -> None:
        self.invalid_text = InvalidText(self.invalid_text)


@dataclasses.dataclass
class ReadStats:
    """What one pass over a source kept and skipped, with the first place each skip was seen."""

    num_documents: int = 0
    num_empty: int = 0
    num_invalid_utf8: int = 0
    first_empty: str = ""
    first_invalid_utf8: str = ""

    def summary(self) -> str:
        parts = []
        if self.num_empty:
            parts.append(f"skipped {self.num_empty} empty document(s) (first at {self.first_empty})")
        if self.num_invalid_utf8:
            parts.append(f"{self.num_invalid_utf8} document(s) with invalid UTF-8 (first at {self.first_invalid_utf8})")
        return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class _Input:
    """One file (or HF dataset folder) to read, with the input folder it was found under."""

    path: Path
    root: Path


class DocumentSource:
    """Re-iterable stream of the documents in `inputs` (files or folders, read in the given order)."""

    def __init__(self, inputs: Iterable[str | Path], cfg: ReadConfig | None = None, **fields: Any) -> None:
        """`fields` set fields of `cfg` (default: `ReadConfig()`), e.g. `text_field="body"`."""
        cfg = (cfg or ReadConfig()).replace(**fields)
        self.paths = [Path(p) for p in inputs]
        self.inputs = expand_inputs(self.paths)
        self.text_field = cfg.text_field
        self.domain_field = cfg.domain_field
        self.domain = cfg.domain
        self.invalid_text = cfg.invalid_text
        self.stats = ReadStats()
        self._warned = False

    def __iter__(self) -> Iterator[Document]:
        stats = ReadStats()
        for item in self.inputs:
            for value, domain, where in self._rows(item):
                text = self._valid_text(value, where, stats)
                if text is None:
                    continue
                if not text.strip():
                    stats.num_empty += 1
                    stats.first_empty = stats.first_empty or where
                    continue
                stats.num_documents += 1
                yield {"text": text, "domain": domain, "source": str(item.path)}
        self.stats = stats
        if stats.num_documents == 0:
            skipped = f" ({stats.summary()})" if stats.summary() else ""
            raise DataError(f"{self.describe()}: no documents to read{skipped}")
        if stats.summary() and not self._warned:
            log.warning("%s [invalid UTF-8 policy: %s]", stats.summary(), self.invalid_text.value)
            self._warned = True

    def info(self) -> dict[str, Any]:
        """Inputs, reading options and the counts of the last complete pass (for metadata)."""
        return {
            "inputs": [str(p) for p in self.paths],
            "text_field": self.text_field,
            "domain_field": self.domain_field,
            "domain": self.domain,
            "invalid_utf8": self.invalid_text.value,
            **dataclasses.asdict(self.stats),
        }

    def describe(self) -> str:
        first = str(self.inputs[0].path)
        return first if len(self.inputs) == 1 else f"{first} and {len(self.inputs) - 1} more input(s)"

    def _rows(self, item: _Input) -> Iterator[tuple[str | bytes | None, str, str]]:
        fields = (self.text_field, self.domain_field, self.domain)
        if item.path.is_dir():
            return _dataset_rows(item.path, *fields)
        if item.path.name.endswith(JSONL_SUFFIXES):
            return _jsonl_rows(item.path, *fields)
        if item.path.name.endswith(".parquet"):
            return _parquet_rows(item.path, *fields)
        return _txt_rows(item, self.domain)

    def _valid_text(self, value: str | bytes | None, where: str, stats: ReadStats) -> str | None:
        """Return the text under the invalid-UTF-8 policy; None means the document is skipped."""
        if value is None:
            return ""
        try:
            if isinstance(value, bytes):
                return value.decode("utf-8")
            value.encode("utf-8")  # undecodable jsonl bytes and JSON escapes both show up as lone surrogates
            return value
        except UnicodeError:
            if self.invalid_text is InvalidText.ERROR:
                raise DataError(f"{where}: text is not valid UTF-8 (use --invalid-utf8 skip or replace)") from None
            stats.num_invalid_utf8 += 1
            stats.first_invalid_utf8 = stats.first_invalid_utf8 or where
            if self.invalid_text is InvalidText.SKIP:
                return None
            if isinstance(value, bytes):
                return value.decode("utf-8", "replace")
            return _SURROGATE.sub("\ufffd", value)


class _Calls:
    def __init__(self, factory: Callable[[], Iterable[Document]]) -> None:
        self.factory = factory

    def __iter__(self) -> Iterator[Document]:
        return iter(self.factory())


def reiterable(documents: Iterable[Document] | Callable[[], Iterable[Document]]) -> Iterable[Document]:
    """Documents that can be read more than once: a collection, a DocumentSource, or a function
    returning a fresh iterator (such as `embedded_corpus`). A one-shot iterator is refused."""
    if callable(documents) and not hasattr(documents, "__iter__"):
        return _Calls(documents)
    if isinstance(documents, Iterator):
        raise TypeError("documents are read twice: pass a list, a DocumentSource or a function returning an iterator")
    return documents


def expand_inputs(inputs: Iterable[str | Path]) -> list[_Input]:
    """Resolve files and folders into the ordered list of readable inputs, or raise DataError."""
    found: list[_Input] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"{path}: input not found")
        if path.is_file():
            if not path.name.endswith(SUPPORTED):
                raise DataError(f"{path}: unsupported input format (expected {', '.join(SUPPORTED)} or a folder)")
            found.append(_Input(path, path.parent))
        elif any((path / marker).is_file() for marker in _HF_MARKERS):
            found.append(_Input(path, path))
        else:
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUPPORTED))
            if not files:
                raise DataError(f"{path}: folder holds no readable files ({', '.join(SUPPORTED)}) and is no HF dataset")
            found.extend(_Input(p, path) for p in files)
    if not found:
        raise DataError("no input given")
    return found


def _label(record: dict[str, Any], domain_field: str, domain: str | None, where: str) -> str:
    if domain is not None:
        return domain
    value = record.get(domain_field)
    if value is None or value == "":
        raise DataError(f"{where}: no domain field '{domain_field}' (pass --domain NAME to label every document)")
    return str(value)


def _text(record: dict[str, Any], text_field: str, where: str) -> str | None:
    if text_field not in record:
        raise DataError(f"{where}: no text field '{text_field}' (fields: {', '.join(map(str, record)) or 'none'})")
    value = record[text_field]
    if value is not None and not isinstance(value, (str, bytes)):
        raise DataError(f"{where}: text field '{text_field}' holds {type(value).__name__}, expected a string")
    return value


def _txt_rows(item: _Input, domain: str | None) -> Iterator[tuple[bytes, str, str]]:
    rel = item.path.relative_to(item.root)
    label = domain or (rel.parts[0] if len(rel.parts) > 1 else item.root.resolve().name)
    try:
        data = item.path.read_bytes()
    except OSError as e:
        raise DataError(f"{item.path}: cannot read ({e.strerror})") from None
    yield data.removeprefix(b"\xef\xbb\xbf"), label, str(item.path)


def _zstd_lines(path: Path) -> Iterator[bytes]:
    """Lines of a (multi-frame) zstd file; a frame cut short raises DataError."""
    dctx = zstandard.ZstdDecompressor()
    frame, fed, pending, tail = dctx.decompressobj(), False, b"", b""
    with open(path, "rb") as f:
        while data := pending or f.read(_READ_BYTES):
            pending, fed = b"", True
            tail += frame.decompress(data)
            *lines, tail = tail.split(b"\n")
            yield from lines
            if frame.eof:
                pending, frame, fed = frame.unused_data, dctx.decompressobj(), False
    if fed:
        raise DataError(f"{path}: zstd stream ends mid-frame; the file is truncated")
    if tail:
        yield tail


def _lines(path: Path) -> Iterator[bytes]:
    if path.name.endswith(".zst"):
        yield from _zstd_lines(path)
        return
    with gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb") as f:
        yield from f


def jsonl_records(path: Path, *, strict: bool = False) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) for every non-blank line of a jsonl file (plain, .gz or .zst), `where` being
    "file:line"; DataError naming it for a line that is not a JSON object, a truncated archive or an
    unreadable file. Bytes that are not UTF-8 are an error if `strict`, else kept as surrogates
    (for the `invalid_text` policy)."""
    try:
        for lineno, line in enumerate(_lines(path), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            record = parse_json(line.decode("utf-8", "strict" if strict else "surrogateescape"), where)
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object per line, got {type(record).__name__}")
            yield where, record
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line)") from None
    except (EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError) as e:
        raise DataError(f"{path}: cannot decompress ({e}); the file is truncated or corrupt") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _jsonl_rows(path: Path, text_field: str, domain_field: str, domain: str | None) -> Iterator[tuple[str | None, str, str]]:
    for where, record in jsonl_records(path):
        yield _text(record, text_field, where), _label(record, domain_field, domain, where), where


def _columns(available: list[str], text_field: str, domain_field: str, domain: str | None, where: Path) -> list[str]:
    wanted = [text_field] if domain is not None else [text_field, domain_field]
    for name in wanted:
        if name not in available:
            kind = "text" if name == text_field else "domain"
            hint = "" if kind == "text" else " (pass --domain NAME to label every document)"
            raise DataError(f"{where}: no {kind} column '{name}' (columns: {', '.join(available)}){hint}")
    return wanted


def _table_rows(
    batches: Iterable[dict[str, list[Any]]], text_field: str, domain_field: str, domain: str | None, where: str
) -> Iterator[tuple[str | None, str, str]]:
    row = 0
    for batch in batches:
        texts = batch[text_field]
        labels = batch[domain_field] if domain is None else None
        for i, text in enumerate(texts):
            place = f"{where}:row {row + i}"
            if labels is None:
                label = domain
            elif labels[i] is None or labels[i] == "":
                raise DataError(f"{place}: empty domain field '{domain_field}'")
            else:
                label = str(labels[i])
            yield _text({text_field: text}, text_field, place), label, place
        row += len(texts)


def _parquet_rows(path: Path, text_field: str, domain_field: str, domain: str | None) -> Iterator[tuple[str | None, str, str]]:
    pa = optional_import("pyarrow", "data", f"{path}: reading parquet")
    pq = optional_import("pyarrow.parquet", "data", f"{path}: reading parquet")
    try:
        pf = pq.ParquetFile(path)
        columns = _columns(pf.schema_arrow.names, text_field, domain_field, domain, path)
        batches = (b.to_pydict() for b in pf.iter_batches(batch_size=_ROWS_PER_BATCH, columns=columns))
        yield from _table_rows(batches, text_field, domain_field, domain, str(path))
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: cannot read parquet ({e})") from None


def _dataset_rows(path: Path, text_field: str, domain_field: str, domain: str | None) -> Iterator[tuple[str | None, str, str]]:
    datasets = optional_import("datasets", "hf", f"{path}: reading a HF dataset")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises many types for a damaged folder
        raise DataError(f"{path}: cannot load HF dataset ({e})") from None
    splits = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [("", loaded)]
    for split, ds in splits:
        columns = _columns(ds.column_names, text_field, domain_field, domain, path)
        batches = ds.select_columns(columns).iter(batch_size=_ROWS_PER_BATCH)
        yield from _table_rows(batches, text_field, domain_field, domain, f"{path}{'/' + split if split else ''}")
