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

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from emomoe.data.arrays import token_dtype, write_shard
from emomoe.data.holdout import CorpusScan, Fingerprint, text_hash
from emomoe.data.readers import Document, DocumentSource, reiterable
from emomoe.data.store import FORMAT, FORMAT_VERSION, METADATA_FILE, TOKENIZER_DIR, Split, TokenStore
from emomoe.data.tokenizer import TextTokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.io import atomic_write_text

log = logging.getLogger(__name__)

CHUNK_BYTES = 32 << 20
_BATCH_BYTES = 1 << 20  # text per encode_batch call: big enough for both cores, small for a live progress bar
_PLAN_FILE = "plan.json"
_CHUNKS_DIR = "chunks"


def partial_path(out: Path) -> Path:
    """Where an unfinished store is built (and found again to resume)."""
    return out.with_name(f".{out.name}.partial")


def tokenize_corpus(
    documents: Iterable[Document] | Callable[[], Iterable[Document]],
    tokenizer: TextTokenizer,
    out: str | Path,
    *,
    val_fraction: float = 0.02,
    min_val_docs: int = 4,
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
    if out.exists() and not overwrite:
        raise DataError(f"{out}: already exists (pass --force to replace it)")
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
    return TokenStore.open(out)


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
        start = 0
        while start < len(chunk):
            stop, size = start, 0
            while stop < len(chunk) and (size < _BATCH_BYTES or stop == start):
                size += chunk[stop].num_bytes
                stop += 1
            batch = self.tokenizer.encode_batch([doc.text for doc in chunk[start:stop]])
            ids.extend(np.array(doc_ids, self.dtype) for doc_ids in batch)
            self.num_tokens += sum(map(len, batch))
            rate = self.num_tokens / max(time.perf_counter() - self.start, 1e-9)
            bar.set_postfix_str(f"{rate / 1e3:.0f}k tok/s", refresh=False)
            bar.update(size)
            start = stop
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
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(partial, out)
    shutil.rmtree(old, ignore_errors=True)
