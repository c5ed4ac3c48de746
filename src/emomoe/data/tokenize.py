"""Turn a corpus into a token store: scan, hold out, encode on all cores, write in chunks, resume.

1. Scan: one streaming pass (`CorpusScan`) gives the domains, their sizes, the per-domain
   validation thresholds and a fingerprint of the input.
2. Plan: tokenizer hash + fingerprint + settings, saved in `.<out>.partial/plan.json` beside the
   output. A partial folder with the same plan is resumed: its completed chunks are kept.
3. Encode: documents are cut, in input order, into chunks of about `chunk_bytes` of text. A chunk
   is encoded with `encode_batch` (Rust threads on every core), split into one array per
   (split, domain), written with its index, and marked complete by `chunks/NNNNN.json`, written last.
4. Finish: metadata.json and a copy of the tokenizer go in; the folder is renamed onto `out`,
   so `out` is either absent, the old store, or the complete new one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from emomoe.config import ranged
from emomoe.data.arrays import token_dtype, write_shard
from emomoe.data.holdout import CorpusScan, Fingerprint, text_hash
from emomoe.data.readers import Document, DocumentSource, ReadConfig, reiterable
from emomoe.data.store import FORMAT, FORMAT_VERSION, METADATA_FILE, TOKENIZER_DIR, Split, TokenStore
from emomoe.data.tokenizer import TextTokenizer
from emomoe.errors import ConfigError, DataError, warn
from emomoe.io import WRITE_ERRNOS, atomic_write_text, move_into_place, refuse_existing

log = logging.getLogger(__name__)

CHUNK_BYTES = 32 << 20
VAL_FRACTION = 0.02
MIN_VAL_DOCS = 4
_MB = 1 << 20
_BATCH_BYTES = 1 << 20  # text per encode_batch call: big enough for both cores, small for a live progress bar
PIECE_CHARS = 1 << 18
"""Longer documents are encoded in pieces of about this many characters: HF tokenizers needs about
150 bytes of memory per character of one text (a 20 MB single-line document took 3.3 GB)."""
_PLAN_FILE = "plan.json"
_CHUNKS_DIR = "chunks"


@dataclasses.dataclass
class TokenizeConfig(ReadConfig):
    val_fraction: float = VAL_FRACTION
    """Fraction of each domain's documents held out for validation."""
    min_val_docs: int = MIN_VAL_DOCS
    """Hold out at least this many documents per domain, but never more than half."""
    chunk_mb: float = ranged(CHUNK_BYTES / _MB, gt=0)
    """Text per resumable chunk, in MB."""
    eos_token: str | None = None
    """The EOS token, if the tokenizer does not declare one."""

    @property
    def chunk_bytes(self) -> int:
        return max(1, int(self.chunk_mb * _MB))


def split_points(text: str, piece_chars: int) -> list[int]:
    """Where to cut a long text into pieces of at most about `piece_chars`: just before a space that
    follows a non-space, where the byte-level pre-tokenizer starts a new word anyway, so the pieces
    encode to the same ids as the whole (a text without such spaces is cut where it must be)."""
    cuts, start = [0], 0
    while len(text) - start > piece_chars:
        limit = start + piece_chars
        cut = text.rfind(" ", start + piece_chars // 2, limit)
        while cut > start and text[cut - 1].isspace():
            cut = text.rfind(" ", start + piece_chars // 2, cut)
        start = cut if cut > start else limit
        cuts.append(start)
    return cuts + [len(text)]


def size_batches(sizes: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive (start, stop) ranges of items adding up to about `limit` (at least one item each)."""
    ranges, start = [], 0
    while start < len(sizes):
        stop, size = start, 0
        while stop < len(sizes) and (size < limit or stop == start):
            size += sizes[stop]
            stop += 1
        ranges.append((start, stop))
        start = stop
    return ranges


def encode_texts(tokenizer: TextTokenizer, texts: list[str], dtype: np.dtype, piece_chars: int = PIECE_CHARS) -> list[np.ndarray]:
    """The ids of each text, as `dtype` arrays: one parallel `encode_batch` over all texts cut into
    pieces of bounded length (see `split_points`), so a huge single-line document needs little memory."""
    pieces, owners = [], []
    for i, text in enumerate(texts):
        cuts = split_points(text, piece_chars)
        pieces += [text[a:b] for a, b in zip(cuts, cuts[1:])]
        owners += [i] * (len(cuts) - 1)
    parts: list[list[np.ndarray]] = [[] for _ in texts]
    for start, stop in size_batches([len(p) for p in pieces], _BATCH_BYTES):  # bounds the encoder's memory
        for owner, ids in zip(owners[start:stop], tokenizer.encode_batch(pieces[start:stop])):
            parts[owner].append(np.array(ids, dtype))
    return [np.concatenate(p) if len(p) > 1 else p[0] if p else np.zeros(0, dtype) for p in parts]


def partial_path(out: Path) -> Path:
    """Where an unfinished store is built (and found again to resume)."""
    return out.with_name(f".{out.name}.partial")


def tokenize_corpus(
    documents: Iterable[Document] | Callable[[], Iterable[Document]],
    tokenizer: TextTokenizer,
    out: str | Path,
    *,
    val_fraction: float = VAL_FRACTION,
    min_val_docs: int = MIN_VAL_DOCS,
    chunk_bytes: int = CHUNK_BYTES,
    overwrite: bool = False,
    progress: bool = True,
) -> TokenStore:
    """Write the token store of `documents` to `out`.

    The documents are read twice (scan, then encode): pass a collection, a `DocumentSource` or a
    function returning a fresh iterator (e.g. `emomoe.data.corpus.embedded_corpus`).

    For a `DocumentSource`, its inputs, options and skip counts are recorded in the metadata.
    """
    out = Path(out)
    documents = reiterable(documents)
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction: expected a number in [0, 1), got {val_fraction}")
    if min_val_docs < 0 or chunk_bytes < 1:
        raise ConfigError(f"min_val_docs / chunk_bytes: expected >= 0 / >= 1, got {min_val_docs} / {chunk_bytes}")
    refuse_existing(out, overwrite)
    scan = CorpusScan.of(documents, min_val_docs)
    if not scan.domains:
        raise DataError(f"no documents to tokenize into {out}")
    plan = {
        "tokenizer_hash": tokenizer.hash,
        "input_fingerprint": scan.fingerprint,
        "val_fraction": val_fraction,
        "min_val_docs": min_val_docs,
        "chunk_bytes": chunk_bytes,
        "val_thresholds": scan.val_thresholds(val_fraction, min_val_docs),
    }
    partial = _prepare_partial(out, plan, overwrite)
    writer = _ChunkWriter(partial, tokenizer, list(scan.domains), plan["val_thresholds"])
    done = {int(p.stem) for p in (partial / _CHUNKS_DIR).glob("*.json")}
    if done:
        log.info("%s: resuming, %d chunk(s) already done", out, len(done))
    fingerprint = Fingerprint()
    bar = tqdm(total=scan.num_bytes, unit="B", unit_scale=True, desc=f"tokenize {out.name}", disable=not progress)
    with bar:
        for number, chunk in enumerate(_chunks(documents, chunk_bytes, fingerprint)):
            if number in done:
                bar.update(sum(doc.num_bytes for doc in chunk))
            else:
                writer.write(number, chunk, bar)
    if fingerprint.hexdigest() != scan.fingerprint:
        shutil.rmtree(partial)  # its chunks mix two versions of the input
        raise DataError(f"{out}: the input changed while it was being tokenized; run again")
    source_info = documents.info() if isinstance(documents, DocumentSource) else {}
    _finish(partial, out, plan, scan, tokenizer, number + 1, source_info)
    store = TokenStore.open(out)
    for problem in holdout_warnings(store, val_fraction):
        warn(problem)
    return store


def holdout_warnings(store: TokenStore, val_fraction: float) -> list[str]:
    """What a user should hear about the validation split: domains without one, or with much more held out than asked."""
    problems = []
    for domain, val in store.metadata["counts"][Split.VAL.value].items():
        total = val["num_documents"] + store.metadata["counts"][Split.TRAIN.value][domain]["num_documents"]
        if val["num_documents"] == 0:
            problems.append(f"domain {domain!r}: no validation documents ({total} in all); eval and validation skip it")
        elif val["num_documents"] > 1 and val["num_documents"] > 2 * val_fraction * total:
            problems.append(
                f"domain {domain!r}: held out {val['num_documents']} of {total} documents for validation "
                f"(--min-val-docs keeps a few in every domain; at most half)"
            )
    return problems


def _prepare_partial(out: Path, plan: dict[str, Any], overwrite: bool) -> Path:
    partial = partial_path(out)
    plan = json.loads(json.dumps(plan))  # compare as it reads back from disk
    if partial.exists():
        try:
            old = json.loads((partial / _PLAN_FILE).read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if old == plan:
            return partial
        if not overwrite:
            differ = sorted(k for k in plan if old.get(k) != plan[k])
            raise DataError(
                f"{partial}: an interrupted run with a different {', '.join(differ)} is in the way "
                f"(pass --force to discard it)"
            )
        shutil.rmtree(partial)
    (partial / _CHUNKS_DIR).mkdir(parents=True)
    atomic_write_text(partial / _PLAN_FILE, json.dumps(plan, indent=1))
    return partial


class _Doc(NamedTuple):
    text: str
    domain: str
    num_bytes: int
    hash: int


def _chunks(documents: Iterable[Document], chunk_bytes: int, fingerprint: Fingerprint) -> Iterator[list[_Doc]]:
    """Consecutive documents, about `chunk_bytes` of UTF-8 text per chunk."""
    chunk: list[_Doc] = []
    size = 0
    for doc in documents:
        data = doc["text"].encode("utf-8")
        h = text_hash(data)
        fingerprint.update(doc["domain"], h)
        chunk.append(_Doc(doc["text"], doc["domain"], len(data), h))
        size += len(data)
        if size >= chunk_bytes:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


class _ChunkWriter:
    """Encodes one chunk and writes its (split, domain) arrays, then marks the chunk complete."""

    def __init__(self, folder: Path, tokenizer: TextTokenizer, domains: list[str], thresholds: dict[str, int]):
        self.folder = folder
        self.tokenizer = tokenizer
        self.domain_id = {name: i for i, name in enumerate(domains)}
        self.thresholds = thresholds
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.num_tokens = 0
        self.start = time.perf_counter()

    def write(self, number: int, chunk: list[_Doc], bar: tqdm) -> None:
        ids = self._encode(chunk, bar)
        try:
            self._write(number, chunk, ids)
        except OSError as e:  # numpy reports a short write without an errno
            reason = WRITE_ERRNOS.get(e.errno, e.strerror or str(e))
            raise DataError(
                f"{self.folder}: cannot write chunk {number}: {reason}; the chunks already written are kept, "
                "free space and run the same command again to resume"
            ) from None

    def _write(self, number: int, chunk: list[_Doc], ids: list[np.ndarray]) -> None:
        groups: dict[tuple[str, int], list[int]] = {}
        for i, doc in enumerate(chunk):
            split = Split.VAL if doc.hash < self.thresholds[doc.domain] else Split.TRAIN
            groups.setdefault((split.value, self.domain_id[doc.domain]), []).append(i)
        shards = []
        for (split, domain), members in sorted(groups.items()):
            lengths = np.array([len(ids[i]) + 1 for i in members], dtype=np.int64)
            eos = np.array([self.tokenizer.eos_id], self.dtype)
            tokens = np.concatenate([part for i in members for part in (ids[i], eos)])
            name = f"{split}/c{number:05d}-d{domain:03d}.npy"
            (self.folder / split).mkdir(exist_ok=True)
            write_shard(self.folder / name, tokens, lengths, domain)
            shards.append({"split": split, "tokens": name, "domain": domain,
                           "num_tokens": len(tokens), "num_documents": len(members)})
        atomic_write_text(self.folder / _CHUNKS_DIR / f"{number:05d}.json", json.dumps(shards))

    def _encode(self, chunk: list[_Doc], bar: tqdm) -> list[np.ndarray]:
        """Token ids per document, as compact arrays: Python int lists would take 18x the memory."""
        ids: list[np.ndarray] = []
        for start, stop in size_batches([doc.num_bytes for doc in chunk], _BATCH_BYTES):
            batch = encode_texts(self.tokenizer, [doc.text for doc in chunk[start:stop]], self.dtype)
            ids.extend(batch)
            self.num_tokens += sum(map(len, batch))
            rate = self.num_tokens / max(time.perf_counter() - self.start, 1e-9)
            bar.set_postfix_str(f"{rate / 1e3:.0f}k tok/s", refresh=False)
            bar.update(sum(doc.num_bytes for doc in chunk[start:stop]))
        return ids


def _finish(
    partial: Path,
    out: Path,
    plan: dict[str, Any],
    scan: CorpusScan,
    tokenizer: TextTokenizer,
    num_chunks: int,
    source_info: dict[str, Any],
) -> None:
    domains = list(scan.domains)
    shards: dict[str, list[dict[str, Any]]] = {split.value: [] for split in Split}
    counts = {split.value: {d: {"num_documents": 0, "num_tokens": 0} for d in domains} for split in Split}
    for number in range(num_chunks):
        for entry in json.loads((partial / _CHUNKS_DIR / f"{number:05d}.json").read_text()):
            split = entry.pop("split")
            entry["domain"] = domains[entry["domain"]]
            shards[split].append(entry)
            counts[split][entry["domain"]]["num_documents"] += entry["num_documents"]
            counts[split][entry["domain"]]["num_tokens"] += entry["num_tokens"]
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "tokenizer_hash": tokenizer.hash,
        "vocab_size": tokenizer.vocab_size,
        "eos_id": tokenizer.eos_id,
        "eos_token": tokenizer.eos_token,
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "domains": domains,
        "holdout": {"val_fraction": plan["val_fraction"], "min_val_docs": plan["min_val_docs"]},
        "input_fingerprint": scan.fingerprint,
        "num_tokens": {split: sum(c["num_tokens"] for c in per.values()) for split, per in counts.items()},
        "counts": counts,
        "shards": shards,
        "source": source_info,
    }
    if (partial / TOKENIZER_DIR).exists():
        shutil.rmtree(partial / TOKENIZER_DIR)
    tokenizer.write_files(partial / TOKENIZER_DIR)
    (partial / METADATA_FILE).write_text(json.dumps(metadata, indent=1, ensure_ascii=False) + "\n")
    shutil.rmtree(partial / _CHUNKS_DIR)
    (partial / _PLAN_FILE).unlink()
    move_into_place(partial, out)
