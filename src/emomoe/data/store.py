"""The token store: train/val splits of flat token arrays with a document index, and its metadata.

A store directory (written by `emomoe tokenize`, see `data.tokenize`) holds
    metadata.json            format, tokenizer hash, vocab size, EOS id, domains, dtype, counts, shards
    tokenizer/               the tokenizer that made it (tokenizer.json + emomoe_tokenizer.json)
    train/*.npy, val/*.npy   token arrays, EOS after every document, one domain per array
    */*.index.npy            beside each array: offset, length and domain of every document

Pre-tokenized OLMo-core / Dolma arrays without an index open through a mix file instead (YAML or
JSON, see `MixConfig`): each entry names a domain, a split and its `.npy`/`.bin` arrays; their
documents come from EOS positions. Both kinds open with `TokenStore.open(path)`.

Every array is one domain, so restricting training or evaluation to domains selects arrays.
"""

from __future__ import annotations

import dataclasses
import enum
import glob
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from emomoe.config import Config
from emomoe.data.arrays import index_from_eos, open_tokens, read_index, token_dtype
from emomoe.data.tokenizer import TextTokenizer, load_tokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.io import parse_errors, read_json

METADATA_FILE = "metadata.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "emomoe-token-store"
FORMAT_VERSION = 1
MIX_SUFFIXES = (".yaml", ".yml", ".json")


class Split(enum.StrEnum):
    """A part of the store; a document is in exactly one."""

    TRAIN = "train"
    """Documents the loader trains on."""
    VAL = "val"
    """Held-out documents, never seen in training windows."""


class TokenDtype(enum.StrEnum):
    """Element type of a headerless `.bin` token array."""

    UINT16 = "uint16"
    """Vocabularies of up to 65,536 tokens."""
    UINT32 = "uint32"
    """Larger vocabularies (e.g. dolma2, 100,278)."""


@dataclasses.dataclass
class MixEntry(Config):
    """Token arrays of one domain in one split. Paths are relative to the mix file; globs allowed."""

    domain: str = ""
    paths: list[str] = dataclasses.field(default_factory=list)
    split: Split = Split.TRAIN

    def validate(self) -> None:
        if not self.domain:
            raise ConfigError("domain: every mix entry needs a domain name")
        if not self.paths:
            raise ConfigError("paths: every mix entry needs at least one token array")


@dataclasses.dataclass
class MixConfig(Config):
    """Pre-tokenized arrays without an index. EOS id and vocab size come from `tokenizer` if unset."""

    entries: list[MixEntry] = dataclasses.field(default_factory=list)
    tokenizer: str = ""
    eos_id: int | None = None
    vocab_size: int | None = None
    bin_dtype: TokenDtype | None = None
    """dtype of `.bin` arrays; by default uint16 if the vocabulary fits, else uint32."""

    def validate(self) -> None:
        if not self.entries:
            raise ConfigError("entries: a mix needs at least one entry")
        if not self.tokenizer and (self.eos_id is None or self.vocab_size is None):
            raise ConfigError("eos_id: give eos_id and vocab_size, or a tokenizer to take them from")


@dataclasses.dataclass(frozen=True)
class Shard:
    """One token array of one domain, memory-mapped, with its document index."""

    path: Path
    tokens: np.ndarray
    index: np.ndarray
    domain: int

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def num_documents(self) -> int:
        return len(self.index)


class TokenStore:
    """Read access to a token store or a mix of pre-tokenized arrays."""

    def __init__(
        self,
        path: Path,
        *,
        vocab_size: int,
        eos_id: int,
        domains: list[str],
        tokenizer_hash: str,
        tokenizer_path: Path | None,
        shards: dict[Split, list[Shard]],
        metadata: dict[str, Any],
    ) -> None:
        self.path = path
        self.vocab_size = vocab_size
        self.eos_id = eos_id
        self.domains = domains
        self.tokenizer_hash = tokenizer_hash
        self.tokenizer_path = tokenizer_path
        """The tokenizer the data was made with, if known (`load_tokenizer` reads it)."""
        self.metadata = metadata
        self._shards = shards

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        if not str(path):  # Path("") would be the current folder
            raise DataError("no token store given (set data.store, or pass --data STORE)")
        path = Path(path)
        if path.is_file() and path.name.endswith(MIX_SUFFIXES):
            return _open_mix(path)
        if (path / METADATA_FILE).is_file():
            return _open_store(path)
        if path.with_name(f".{path.name}.partial").is_dir():
            raise DataError(f"{path}: token store is incomplete (an interrupted `emomoe tokenize`; rerun it to resume)")
        if not path.exists() and path.name.endswith(MIX_SUFFIXES):
            raise DataError(f"{path}: mix file not found (a YAML list of token arrays per domain: see docs/data.md)")
        if not path.exists():
            raise DataError(f"{path}: token store not found")
        raise DataError(f"{path}: not a token store (no {METADATA_FILE}) and not a mix file ({', '.join(MIX_SUFFIXES)})")

    def domain_ids(self, names: list[str] | None = None) -> list[int]:
        """Ids of `names` (all domains if None); DataError naming an unknown domain."""
        if names is None:
            return list(range(len(self.domains)))
        for name in names:
            if name not in self.domains:
                raise DataError(f"{self.path}: no domain {name!r} (domains: {', '.join(self.domains)})")
        return [self.domains.index(name) for name in names]

    def shards(self, split: Split | str, domains: list[str] | None = None) -> list[Shard]:
        """The arrays of `split` restricted to `domains`, in store order."""
        if split not in set(Split):
            raise DataError(f"{self.path}: no split {split!r} (splits: {', '.join(Split)})")
        wanted = set(self.domain_ids(domains))
        return [s for s in self._shards[Split(split)] if s.domain in wanted]

    def num_tokens(self, split: Split | str, domains: list[str] | None = None) -> int:
        return sum(s.num_tokens for s in self.shards(split, domains))

    def documents(self, split: Split | str, domains: list[str] | None = None) -> Iterator[tuple[str, np.ndarray]]:
        """(domain name, token ids) for every document of `split`, in store order.

        Each document ends with EOS, except possibly the last of an index-less array whose writer
        did not close it.
        """
        for shard in self.shards(split, domains):
            for offset, length, _ in shard.index:
                yield self.domains[shard.domain], np.asarray(shard.tokens[offset : offset + length])

    def summary(self) -> str:
        """A table of documents and tokens per domain and split."""
        lines = [f"{'domain':<16} {'train docs':>11} {'train tokens':>13} {'val docs':>9} {'val tokens':>11}"]
        for name in self.domains:
            cells = []
            for split in Split:
                shards = self.shards(split, [name])
                cells += [sum(s.num_documents for s in shards), sum(s.num_tokens for s in shards)]
            lines.append(f"{name:<16} {cells[0]:>11,} {cells[1]:>13,} {cells[2]:>9,} {cells[3]:>11,}")
        return "\n".join(lines)

    def check_tokenizer(self, tok: TextTokenizer) -> None:
        """Raise DataError unless `tok` is the tokenizer this store was made with."""
        mine = (self.vocab_size, self.eos_id, self.tokenizer_hash or tok.hash)
        if (tok.vocab_size, tok.eos_id, tok.hash) != mine:
            raise DataError(
                f"{self.path}: tokenizer does not match the store (vocab {tok.vocab_size} vs {self.vocab_size}, "
                f"EOS {tok.eos_id} vs {self.eos_id}, hash {tok.hash[:12]} vs {(self.tokenizer_hash or '?')[:12]})"
            )


def _require(meta: dict[str, Any], key: str, kind: type, file: Path) -> Any:
    if not isinstance(meta.get(key), kind):
        raise DataError(f"{file}: missing or invalid '{key}' (expected {kind.__name__})")
    return meta[key]


def _open_store(path: Path) -> TokenStore:
    file = path / METADATA_FILE
    meta = read_json(file)
    with parse_errors(file, "token store metadata"):
        return _store_from_metadata(path, file, meta)


def _store_from_metadata(path: Path, file: Path, meta: Any) -> TokenStore:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{file}: not an emomoe token store (format should be {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{file}: format version {meta.get('format_version')} is not supported (expected {FORMAT_VERSION})")
    vocab_size = _require(meta, "vocab_size", int, file)
    eos_id = _require(meta, "eos_id", int, file)
    domains = _require(meta, "domains", list, file)
    dtype = np.dtype(_require(meta, "dtype", str, file))
    listing = _require(meta, "shards", dict, file)
    shards: dict[Split, list[Shard]] = {}
    for split in Split:
        shards[split] = []
        for entry in listing.get(split.value, []):
            tokens_path = path / entry["tokens"]
            tokens = open_tokens(tokens_path)
            if tokens.dtype != dtype or len(tokens) != entry["num_tokens"]:
                raise DataError(
                    f"{tokens_path}: holds {len(tokens)} {tokens.dtype} tokens, "
                    f"{file.name} says {entry['num_tokens']} {dtype}; the store is damaged"
                )
            index = read_index(tokens_path, tokens, eos_id)
            domain = domains.index(entry["domain"])
            if (index["domain"] != domain).any():
                raise DataError(f"{tokens_path}: index domain ids disagree with {file.name} ({entry['domain']!r})")
            shards[split].append(Shard(tokens_path, tokens, index, domain))
    return TokenStore(
        path,
        vocab_size=vocab_size,
        eos_id=eos_id,
        domains=domains,
        tokenizer_hash=_require(meta, "tokenizer_hash", str, file),
        tokenizer_path=path / TOKENIZER_DIR if (path / TOKENIZER_DIR).is_dir() else None,
        shards=shards,
        metadata=meta,
    )


def _expand(pattern: str, base: Path, file: Path) -> list[Path]:
    full = Path(pattern) if Path(pattern).is_absolute() else base / pattern
    if glob.has_magic(str(full)):
        matches = sorted(Path(p) for p in glob.glob(str(full)))
        if not matches:
            raise DataError(f"{file}: pattern {pattern!r} matches no token array")
        return matches
    return [full]


def _open_mix(file: Path) -> TokenStore:
    try:
        mix = MixConfig.from_yaml(file)  # YAML is a superset of JSON
    except ConfigError as e:
        raise DataError(str(e)) from None
    tokenizer_hash, tokenizer_path = "", None
    eos_id, vocab_size = mix.eos_id, mix.vocab_size
    if mix.tokenizer:
        tokenizer_path = file.parent / mix.tokenizer
        tok = load_tokenizer(tokenizer_path, eos_token=eos_id)
        if vocab_size not in (None, tok.vocab_size):
            raise DataError(f"{file}: vocab_size {vocab_size} does not match tokenizer {mix.tokenizer} ({tok.vocab_size})")
        tokenizer_hash, eos_id, vocab_size = tok.hash, tok.eos_id, tok.vocab_size
    assert eos_id is not None and vocab_size is not None  # MixConfig.validate
    bin_dtype = np.dtype(mix.bin_dtype.value) if mix.bin_dtype else token_dtype(vocab_size)
    domains = list(dict.fromkeys(e.domain for e in mix.entries))
    shards: dict[Split, list[Shard]] = {split: [] for split in Split}
    for entry in mix.entries:
        domain = domains.index(entry.domain)
        for path in (p for pattern in entry.paths for p in _expand(pattern, file.parent, file)):
            tokens = open_tokens(path, bin_dtype)
            index = index_from_eos(tokens, eos_id, vocab_size, domain, path)
            shards[entry.split].append(Shard(path, tokens, index, domain))
    return TokenStore(
        file,
        vocab_size=vocab_size,
        eos_id=eos_id,
        domains=domains,
        tokenizer_hash=tokenizer_hash,
        tokenizer_path=tokenizer_path,
        shards=shards,
        metadata={"mix": mix.to_dict()},
    )
