"""What the shipped lm-eval tasks share: passages spread over a store's documents, and the YAML of
a multiple-choice task whose splits are local JSON-lines files.

A task has a test split (items from the store's held-out documents, what lm-eval scores) and,
where the training documents allow, a train split (items from the training documents: few-shot
demonstrations, calibration and fine-tuning data for `emomoe protocol`); the two never share a
document.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emomoe.data.store import Split, TokenStore

TRAIN_DOCS_PER_ITEM = 4
"""Training documents read per item wanted: items come from a few documents each, round-robin,
so the rest of a large store's training split is never read."""
SPLITS = {Split.TRAIN: "train", Split.VAL: "test"}
"""The store's split each task split is made from."""


def split_documents(store: TokenStore, split: Split, domain: str, num_items: int) -> list[list[int]]:
    """The token ids (without the closing EOS) of the domain's documents in `split`: all held-out
    ones, the first TRAIN_DOCS_PER_ITEM per item of the training ones."""
    documents = (tokens[:-1].tolist() for _, tokens in store.documents(split, [domain]))
    if split is Split.TRAIN:
        documents = itertools.islice(documents, TRAIN_DOCS_PER_ITEM * num_items)
    return list(documents)


def spread_windows(documents: Sequence[Sequence[int]], span: int, rng: random.Random) -> list[tuple[int, int]]:
    """Non-overlapping windows (document, start) of `span` tokens, in a seeded order that takes one
    window of every document before a second of any, so that long documents do not dominate."""
    windows_by_doc = [[(d, start) for start in range(0, len(doc) - span + 1, span)] for d, doc in enumerate(documents)]
    windows_by_doc = [w for w in windows_by_doc if w]
    for windows in windows_by_doc:
        rng.shuffle(windows)
    rng.shuffle(windows_by_doc)
    longest = max((len(w) for w in windows_by_doc), default=0)
    return [w[i] for i in range(longest) for w in windows_by_doc if i < len(w)]


def task_config(
    name: str, data_files: dict[str, Path], *, doc_to_text: str, doc_to_choice: str | list[str],
    target_delimiter: str, metadata: dict[str, Any],
) -> dict[str, Any]:
    """An lm-eval multiple-choice task over local JSON-lines files, one per split ("train",
    "test"), scored by accuracy; items hold their `label` (the index of the right choice)."""
    splits = {"test_split": "test"} | ({"training_split": "train", "fewshot_split": "train"} if "train" in data_files else {})
    return {
        "task": name,
        "dataset_path": "json",
        # The datasets cache stays beside the data, not in the user's home.
        "dataset_kwargs": {
            "data_files": {split: str(path) for split, path in data_files.items()},
            "cache_dir": str(next(iter(data_files.values())).parent / ".cache"),
        },
        **splits,
        "output_type": "multiple_choice",
        "doc_to_text": doc_to_text,
        "doc_to_choice": doc_to_choice,
        "doc_to_target": "label",
        "target_delimiter": target_delimiter,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0, **metadata},
    }
