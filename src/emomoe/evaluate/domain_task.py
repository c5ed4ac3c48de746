"""An offline multiple-choice task built from a token store's documents: which domain is a passage from?

Each item is a passage of about `context_tokens` tokens, cut between words, from a document of
one domain; the choices are the names of every domain of the store, and the answer is the
passage's own. The train split takes `num_items` passages per domain from the training documents,
the test split as many from the held-out ones (`emomoe.evaluate.task_files`), so the task has the
training data that `emomoe protocol` calibrates and fine-tunes on. Chance is one over the number
of domains.

`write_domain_task` writes the task (`emomoe_domain`) and its items as JSON lines into a folder
that `lm_eval`'s `TaskManager(include_path=...)` reads; nothing is downloaded.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenizer import TextTokenizer, load_tokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.evaluate.continuation import CONTEXT_TOKENS, NUM_ITEMS, clean_cut
from emomoe.evaluate.task_files import SPLITS, split_documents, spread_windows, task_config
from emomoe.io import atomic_path

DOMAIN_TASK = "emomoe_domain"
QUESTION = "Which domain is this passage from?"


def domain_prompt(passage: str) -> str:
    return f"Passage: {passage}\nQuestion: {QUESTION}\nAnswer:"


def domain_items(
    documents: Sequence[Sequence[int]], tokenizer: TextTokenizer, *, label: int, num_items: int,
    context_tokens: int, rng: random.Random,
) -> list[dict[str, Any]]:
    """Up to `num_items` items {prompt, label} from the documents of the domain numbered `label`:
    non-overlapping passages, round-robin over the documents."""
    items = []
    for d, start in spread_windows(documents, context_tokens, rng):
        doc = documents[d]
        passage = tokenizer.decode(doc[clean_cut(tokenizer, doc, start) : clean_cut(tokenizer, doc, start + context_tokens)])
        if passage.strip():
            items.append({"prompt": domain_prompt(passage.strip()), "label": label})
        if len(items) == num_items:
            break
    return items


def write_domain_task(
    store: str | Path | TokenStore,
    out_dir: str | Path,
    *,
    num_items: int = NUM_ITEMS,
    context_tokens: int = CONTEXT_TOKENS,
    seed: int = 0,
) -> dict[str, int]:
    """Write the task for every domain of `store` into `out_dir` (atomically, replacing it); returns
    the number of items per split. The store must keep its tokenizer (to write text)."""
    if num_items < 1 or context_tokens < 1:
        raise ConfigError("num_items, context_tokens: expected positive integers")
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    if store.tokenizer_path is None:
        raise DataError(f"{store.path}: the store has no tokenizer, so its documents cannot be turned into text")
    tokenizer = load_tokenizer(store.tokenizer_path)
    out_dir = Path(out_dir).resolve()
    data_files, counts = {}, {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for split, task_split in SPLITS.items():
            rng = random.Random(f"{seed}:{task_split}")
            items = []
            for label, domain in enumerate(store.domains):
                found = domain_items(
                    split_documents(store, split, domain, num_items), tokenizer, label=label, num_items=num_items,
                    context_tokens=context_tokens, rng=rng,
                )
                if not found:
                    raise DataError(
                        f"{store.path}: domain {domain!r} has no {'training' if split is Split.TRAIN else 'held-out'} "
                        f"document of at least {context_tokens} "
                        f"tokens for the {DOMAIN_TASK} task"
                    )
                items += found
            rng.shuffle(items)
            data_files[task_split] = out_dir / f"{DOMAIN_TASK}.{task_split}.jsonl"
            (tmp / data_files[task_split].name).write_text("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items))
            counts[task_split] = len(items)
        config = task_config(
            DOMAIN_TASK, data_files, doc_to_text="prompt", doc_to_choice=list(store.domains), target_delimiter=" ",
            metadata={"seed": seed},
        )
        (tmp / f"{DOMAIN_TASK}.yaml").write_text(yaml.safe_dump(config))
    return counts
