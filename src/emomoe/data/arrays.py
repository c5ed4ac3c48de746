"""Flat token arrays on disk (the OLMo-core / Dolma layout) and their document index.

A token array is a 1-D array of token ids with EOS after every document: `.npy` (np.save format)
or headerless `.bin` (raw little-endian ids, dtype given by the caller). Arrays are memory-mapped,
never loaded whole. uint16 holds the ids when the vocabulary fits in 65,536 entries, else uint32.

Beside each array of a token store sits `<name>.index.npy`: one record per document with its
`offset` and `length` in tokens (the length counts the closing EOS) and its `domain` id.
An array without an index gets its documents from its EOS positions (`index_from_eos`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emomoe.errors import DataError

INDEX_DTYPE = np.dtype([("offset", "<i8"), ("length", "<i8"), ("domain", "<i4")])
INDEX_SUFFIX = ".index.npy"
_SCAN_BLOCK = 1 << 24  # tokens per block when scanning a big array for EOS


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def index_path(tokens_path: Path) -> Path:
    return tokens_path.with_name(tokens_path.name.removesuffix(".npy") + INDEX_SUFFIX)


def open_tokens(path: Path, bin_dtype: np.dtype | None = None) -> np.ndarray:
    """Memory-map a 1-D integer token array (.npy, or .bin with `bin_dtype`); DataError if damaged."""
    if not path.is_file():
        raise DataError(f"{path}: token array not found")
    if path.suffix == ".bin":
        if bin_dtype is None:
            raise DataError(f"{path}: a headerless .bin token array needs its dtype (uint16 or uint32)")
        size = path.stat().st_size
        if size % bin_dtype.itemsize:
            raise DataError(f"{path}: {size} bytes is not a whole number of {bin_dtype} tokens; the file is truncated")
        return np.memmap(path, dtype=bin_dtype, mode="r") if size else np.empty(0, bin_dtype)
    try:
        tokens = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # np.load raises ValueError, EOFError, SyntaxError, tokenize.TokenError... on a bad header
        raise DataError(f"{path}: not a readable .npy token array ({e}); the file is truncated or corrupt") from None
    if tokens.ndim != 1 or tokens.dtype.kind not in "ui":
        raise DataError(f"{path}: expected a 1-D integer token array, got shape {tokens.shape} of {tokens.dtype}")
    return tokens


def write_shard(path: Path, tokens: np.ndarray, lengths: np.ndarray, domain: int) -> None:
    """Write a token array and its index (non-atomic: callers build inside a temporary folder)."""
    index = np.empty(len(lengths), INDEX_DTYPE)
    index["length"] = lengths
    index["offset"] = np.cumsum(lengths) - lengths
    index["domain"] = domain
    np.save(path, tokens)
    np.save(index_path(path), index)


def read_index(tokens_path: Path, tokens: np.ndarray, eos_id: int) -> np.ndarray:
    """Load and check the index beside `tokens_path`: it must tile the array, each document ending in EOS."""
    path = index_path(tokens_path)
    if not path.is_file():
        raise DataError(f"{path}: document index not found")
    try:
        index = np.load(path, allow_pickle=False)
    except Exception as e:  # np.load raises ValueError, EOFError, SyntaxError, tokenize.TokenError... on a bad header
        raise DataError(f"{path}: not a readable document index ({e}); the file is truncated or corrupt") from None
    if index.dtype != INDEX_DTYPE or index.ndim != 1:
        raise DataError(f"{path}: expected records {INDEX_DTYPE.descr}, got {index.dtype} of shape {index.shape}")
    lengths = index["length"]
    if (lengths < 1).any() or not np.array_equal(index["offset"], np.cumsum(lengths) - lengths):
        raise DataError(f"{path}: document offsets and lengths do not tile the token array")
    if int(lengths.sum()) != len(tokens):
        raise DataError(f"{path}: index covers {int(lengths.sum())} tokens but {tokens_path} holds {len(tokens)}")
    if len(index) and (tokens[index["offset"] + lengths - 1] != eos_id).any():
        raise DataError(f"{path}: some documents do not end with EOS id {eos_id}; index and tokens do not match")
    return index


def index_from_eos(tokens: np.ndarray, eos_id: int, vocab_size: int, domain: int, where: Path) -> np.ndarray:
    """Index of an array without one: a document ends at each EOS (a final one may lack it)."""
    ends = []
    for start in range(0, len(tokens), _SCAN_BLOCK):
        block = np.asarray(tokens[start : start + _SCAN_BLOCK])
        if block.size and int(block.max()) >= vocab_size:
            raise DataError(f"{where}: token id {int(block.max())} is outside the vocabulary of {vocab_size}")
        ends.append(np.flatnonzero(block == eos_id) + start + 1)
    doc_ends = np.concatenate([*ends, np.zeros(0, np.int64)]).astype(np.int64)
    if len(tokens) and (not len(doc_ends) or doc_ends[-1] != len(tokens)):
        doc_ends = np.append(doc_ends, len(tokens))
    index = np.empty(len(doc_ends), INDEX_DTYPE)
    index["offset"] = np.concatenate([[0], doc_ends[:-1]]) if len(doc_ends) else doc_ends
    index["length"] = doc_ends - index["offset"]
    index["domain"] = domain
    return index
