"""Calibration data for expert selection: windows of a token store's training documents, of text
files, or examples of a task.

A source is either one or more domains of a token store (comma-separated: one subset then serves
their union, with the windows split evenly between them) or text files (jsonl, parquet, .txt
folders; anything `emomoe tokenize` reads), tokenized with the model's tokenizer, packed into
windows. Examples (a task's prompts with their gold answers, `emomoe.experiments.task_data`) are
not packed: each is a row of its own, padded, and the padding is no calibration token.

Legend: B batch, S sequence.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from emomoe.data.loader import eval_batches
from emomoe.data.pairs import Example, pair_batch
from emomoe.data.readers import DocumentSource
from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenizer import TextTokenizer, load_tokenizer
from emomoe.errors import ConfigError, DataError, warn
from emomoe.model.docs import doc_ids_from_eos
from emomoe.model.losses import IGNORE_INDEX

Batch = dict[str, torch.Tensor]
MIN_TOKENS = 64
"""Fewer calibration tokens than this are refused: too few routing decisions to rank experts by."""
FEW_TOKENS = 512
"""Fewer than this get a warning: the ranking of the less used experts is mostly noise."""
NUM_CALIB_WINDOWS = 64
"""Calibration windows by default: the paper found one document enough to rank experts."""


@dataclasses.dataclass
class Calibration:
    batches: list[Batch]
    info: dict[str, Any]
    """What the windows are, for the record in selection.json."""

    def check_size(self) -> None:
        """Refuse fewer than MIN_TOKENS tokens; warn below FEW_TOKENS."""
        num_tokens, where = self.info["num_tokens"], _describe(self.info)
        if num_tokens < MIN_TOKENS:
            raise DataError(f"calibration data {where}: {num_tokens} tokens, fewer than the minimum of {MIN_TOKENS} "
                            "needed to rank experts")
        if num_tokens < FEW_TOKENS:
            warn(f"calibration data {where}: only {num_tokens} tokens; below {FEW_TOKENS} the ranking of rarely "
                 "used experts is mostly noise")


def _describe(info: dict[str, Any]) -> str:
    if info["source"] == "files":
        return ", ".join(info["paths"])
    if "store" in info:
        return f"{info['store']} ({', '.join(info['domains'])})"
    if info["source"] == "task":
        return f"task {info['task']} ({info['num_examples']} examples)"
    return str(info["source"])  # windows built by the caller


def _summary(batches: list[Batch]) -> dict[str, int]:
    return {
        "num_windows": sum(b["input_ids_BS"].shape[0] for b in batches),
        "num_tokens": sum(int(valid_tokens(b).sum()) for b in batches),
    }


def valid_tokens(batch: Batch) -> torch.Tensor:
    """Flat mask of the positions holding real text (the padding of a final window is not)."""
    labels_BS = batch.get("labels_BS")
    if labels_BS is None:
        return torch.ones(batch["input_ids_BS"].numel(), dtype=torch.bool)
    return labels_BS.reshape(-1) != IGNORE_INDEX


def store_calibration(
    store: TokenStore | str | Path, domains: list[str], *, num_windows: int, seq_len: int, batch_size: int
) -> Calibration:
    """`num_windows` windows spread evenly over the training documents of `domains` (split between them)."""
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    store.domain_ids(domains)
    per_domain = max(1, math.ceil(num_windows / len(domains)))
    batches: list[Batch] = []
    for domain in domains:
        batches += eval_batches(
            store, Split.TRAIN, seq_len=seq_len, batch_size=batch_size, domains=[domain],
            max_windows_per_domain=per_domain,
        )
    info = {
        "source": "store", "store": str(store.path), "split": "train", "domains": domains, "seq_len": seq_len,
        "vocab_size": store.vocab_size, "tokenizer_hash": store.tokenizer_hash,
    }
    return Calibration(batches, {**info, **_summary(batches)})


def example_calibration(
    examples: Sequence[Example], eos_id: int, *, seq_len: int, batch_size: int, info: dict[str, Any]
) -> Calibration:
    """Every example a row of its own (its prompt then its answer, cut to `seq_len` tokens), padded
    at the end to the longest row of its batch. Causal attention keeps the padding out of the real
    tokens, and `valid_tokens` leaves it out of every statistic. Rows are batched longest first,
    which pads little; `info` says what the examples are."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].prompt_ids) - len(examples[i].answer_ids))
    batches = [
        pair_batch([examples[i] for i in order[start : start + batch_size]], eos_id, seq_len=seq_len, answer_only=False)
        for start in range(0, len(order), batch_size)
    ]
    return Calibration(batches, {**info, **_summary(batches)})


def text_calibration(
    paths: list[str | Path], tokenizer: TextTokenizer, *, num_windows: int, seq_len: int, batch_size: int
) -> Calibration:
    """The first `num_windows` windows of the documents in `paths`, packed with EOS after each."""
    budget = num_windows * seq_len
    stream: list[int] = []
    for doc in DocumentSource(paths, domain="calibration"):
        stream += tokenizer.encode(doc["text"]) + [tokenizer.eos_id]
        if len(stream) >= budget:
            break
    stream = stream[:budget]
    windows = [stream[i : i + seq_len] for i in range(0, len(stream), seq_len)]
    batches = []
    # A short final window goes into a batch of its own, so no padding is needed.
    for same_length in ([w for w in windows if len(w) == seq_len], [w for w in windows if len(w) < seq_len]):
        for i in range(0, len(same_length), batch_size):
            ids_BS = torch.tensor(same_length[i : i + batch_size], dtype=torch.long)
            batches.append({"input_ids_BS": ids_BS, "doc_ids_BS": doc_ids_from_eos(ids_BS, tokenizer.eos_id)})
    info = {
        "source": "files", "paths": [str(p) for p in paths], "seq_len": seq_len,
        "vocab_size": tokenizer.vocab_size, "tokenizer_hash": tokenizer.hash,
    }
    return Calibration(batches, {**info, **_summary(batches)})


def load_calibration(
    source: str,
    *,
    store: str | Path | None,
    tokenizer: str | Path | None,
    num_windows: int,
    seq_len: int,
    batch_size: int,
) -> Calibration:
    """Resolve a `--calib` value: existing paths (comma-separated) are text files, anything else
    names domains of `store`. Text is tokenized with `tokenizer`, else with the store's tokenizer."""
    if num_windows < 1:
        raise ConfigError(f"number of calibration windows: expected a positive integer, got {num_windows}")
    items = [s.strip() for s in source.split(",") if s.strip()]
    if not items:
        raise ConfigError("calib: empty; give domains of the token store or text files")
    if all(Path(item).exists() for item in items):
        tok = _text_tokenizer(tokenizer, store, source)
        return text_calibration(items, tok, num_windows=num_windows, seq_len=seq_len, batch_size=batch_size)
    if store is None:
        raise ConfigError(f"calib '{source}': not an existing file, and no token store (--data) to take domains from")
    return store_calibration(store, items, num_windows=num_windows, seq_len=seq_len, batch_size=batch_size)


def _text_tokenizer(tokenizer: str | Path | None, store: str | Path | None, source: str) -> TextTokenizer:
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    if store is not None and (path := TokenStore.open(store).tokenizer_path) is not None:
        return load_tokenizer(path)
    raise DataError(
        f"calib '{source}': text files need the model's tokenizer; pass --tokenizer (or a --data store that has one)"
    )
