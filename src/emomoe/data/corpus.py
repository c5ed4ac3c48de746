"""The embedded demo corpus: real multi-domain text that ships inside the package.

The corpus is one zstd-compressed JSON-lines file, one document per line:
`{"text": ..., "domain": ..., "source": ...}`. `source` names the Debian package or PyPI wheel
the text came from and the path inside it (`package:path[::part][#k]`). `MANIFEST.json` beside
it records the pinned sources, their licenses and the document counts per domain;
`LICENSES.md` is the provenance note. `scripts/build_corpus` rebuilds all three.

Reading needs no network: the file is streamed through `zstandard` and parsed line by line.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import zstandard

from emomoe.errors import ConfigError, DataError

DOMAINS: tuple[str, ...] = ("code", "legal", "math", "literature", "tech-en", "german", "chinese")
MAX_DOC_CHARS = 20_000
CORPUS_FILENAME = "corpus.jsonl.zst"
MANIFEST_FILENAME = "MANIFEST.json"
_EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
_FIELDS = ("text", "domain", "source")
_ZSTD_FRAME_HEADER_MAX_BYTES = 18


def embedded_corpus_path() -> Path:
    """Path of the shipped corpus file (`corpus.jsonl.zst`)."""
    return _EMBEDDED_DIR / CORPUS_FILENAME


def embedded_manifest() -> dict:
    """The parsed `MANIFEST.json` that describes the shipped corpus."""
    path = embedded_corpus_path().with_name(MANIFEST_FILENAME)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: embedded corpus manifest is missing; rebuild it with scripts/build_corpus") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: manifest is not valid JSON ({e})") from None


def embedded_corpus(domains: Iterable[str] | None = None) -> Iterator[dict[str, str]]:
    """Stream the shipped documents as dicts {"text", "domain", "source"}, in file order.

    `domains` keeps only those domains (names from `DOMAINS`); None keeps all.
    """
    wanted = _check_domains(domains)
    path = embedded_corpus_path()
    for record in _read_records(path):
        if wanted is None or record["domain"] in wanted:
            yield record


def _check_domains(domains: Iterable[str] | None) -> frozenset[str] | None:
    if domains is None:
        return None
    wanted = frozenset(domains)
    unknown = sorted(wanted - set(DOMAINS))
    if unknown:
        raise ConfigError(f"domains: unknown domain(s) {unknown}; expected names from {list(DOMAINS)}")
    return wanted


def _read_records(path: Path) -> Iterator[dict[str, str]]:
    try:
        raw = path.open("rb")
    except FileNotFoundError:
        raise DataError(f"{path}: embedded corpus file is missing; rebuild it with scripts/build_corpus") from None
    with raw:
        try:
            # The builder writes one frame that records its size; a cut-off file reads short of it.
            num_expected = zstandard.frame_content_size(raw.read(_ZSTD_FRAME_HEADER_MAX_BYTES))
            raw.seek(0)
            with zstandard.ZstdDecompressor().stream_reader(raw) as reader:
                # newline="\n": the builder guarantees that "\n" is the only line break in the file.
                lines = io.TextIOWrapper(reader, encoding="utf-8", newline="\n")
                for line_no, line in enumerate(lines, start=1):
                    yield _parse_record(path, line_no, line)
                num_read = reader.tell()
        except (zstandard.ZstdError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: corrupt compressed corpus ({e})") from None
    if num_expected >= 0 and num_read != num_expected:
        raise DataError(f"{path}: truncated: {num_read} of {num_expected} bytes decompress; rebuild or reinstall it")


def _parse_record(path: Path, line_no: int, line: str) -> dict[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{line_no}: not a JSON object ({e.msg})") from None
    if not isinstance(record, dict) or any(not isinstance(record.get(k), str) for k in _FIELDS):
        raise DataError(f"{path}:{line_no}: expected string fields {list(_FIELDS)}")
    return {k: record[k] for k in _FIELDS}
