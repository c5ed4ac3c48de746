"""A token store of chosen documents of another store: what a study trains or calibrates on when it
must see exactly those documents and nothing else (the k documents of `emomoe demo --adapt`).

The new store keeps the source's tokenizer, vocabulary and domain list (so a model trained on the
source fits it, and domain ids mean the same), and holds the chosen documents of one domain, in the
order given, as its train split; it has no validation split. Its metadata records where the
documents came from (`documents_of`: store, split, domain, and their numbers in store order).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from emomoe.data.arrays import token_dtype, write_shard
from emomoe.data.store import FORMAT, FORMAT_VERSION, METADATA_FILE, TOKENIZER_DIR, Split, TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.errors import DataError
from emomoe.io import atomic_path, refuse_existing

SHARD_NAME = "documents.npy"


def document_tokens(store: TokenStore, split: Split | str, domain: str) -> list[np.ndarray]:
    """Every document of `domain` in `split`, in store order (EOS-terminated token arrays)."""
    return [tokens for _, tokens in store.documents(split, [domain])]


def write_documents_store(
    store: TokenStore, split: Split | str, domain: str, numbers: list[int], out: str | Path, *, force: bool = False
) -> TokenStore:
    """Write documents `numbers` (their positions in `document_tokens(store, split, domain)`) as the
    train split of a new store at `out`, atomically; an existing `out` is replaced only with `force`."""
    out = Path(out)
    refuse_existing(out, force)
    documents = document_tokens(store, split, domain)
    outside = [n for n in numbers if not 0 <= n < len(documents)]
    if outside or len(set(numbers)) != len(numbers) or not numbers:
        raise DataError(
            f"{store.path}: expected distinct document numbers in [0, {len(documents)}) of {domain!r} ({split}), "
            f"got {numbers if len(numbers) <= 8 else f'{len(numbers)} numbers'}"
        )
    chosen = [documents[n] for n in numbers]
    dtype = token_dtype(store.vocab_size)
    tokens = np.concatenate(chosen).astype(dtype)
    counts = {s.value: {d: {"num_documents": 0, "num_tokens": 0} for d in store.domains} for s in Split}
    counts[Split.TRAIN.value][domain] = {"num_documents": len(chosen), "num_tokens": len(tokens)}
    shard = {"tokens": f"{Split.TRAIN.value}/{SHARD_NAME}", "domain": domain, "num_documents": len(chosen),
             "num_tokens": len(tokens)}
    metadata = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "tokenizer_hash": store.tokenizer_hash,
        "vocab_size": store.vocab_size, "eos_id": store.eos_id, "dtype": dtype.name, "domains": store.domains,
        "num_tokens": {Split.TRAIN.value: len(tokens), Split.VAL.value: 0},
        "counts": counts,
        "shards": {Split.TRAIN.value: [shard], Split.VAL.value: []},
        "documents_of": {"store": str(store.path), "split": str(split), "domain": domain, "numbers": numbers},
    }
    with atomic_path(out) as tmp:
        (tmp / Split.TRAIN.value).mkdir(parents=True)
        write_shard(tmp / shard["tokens"], tokens, np.array([len(d) for d in chosen]), store.domains.index(domain))
        if store.tokenizer_path is not None:
            load_tokenizer(store.tokenizer_path).write_files(tmp / TOKENIZER_DIR)
        (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=1, ensure_ascii=False) + "\n")
    return TokenStore.open(out)
