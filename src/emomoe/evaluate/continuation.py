"""An offline lm-eval task built from a token store's documents: pick the true continuation.

Each item is a passage of `context_tokens` tokens from a document of one domain and four choices
of about `continuation_tokens` tokens: what really follows the passage, and the same part of three
other passages of the same domain, from other documents (seeded). Every choice is real text of the
domain, so only a model that follows the passage beats chance (25%). Test items come from the
held-out documents, train items from the training documents (`emomoe.evaluate.task_files`).

`write_continuation_tasks` writes one lm-eval task per domain (`emomoe_continuation_<domain>`),
their group (`emomoe_continuation`, accuracy weighted by item count), and the items as JSON
lines, into a folder that `lm_eval`'s `TaskManager(include_path=...)` reads. Nothing is
downloaded: the data files are local and absolute.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenizer import TextTokenizer, load_tokenizer
from emomoe.errors import ConfigError, DataError, warn
from emomoe.evaluate.task_files import SPLITS, split_documents, spread_windows, task_config
from emomoe.io import atomic_path

GROUP = "emomoe_continuation"
NUM_CHOICES = 4
NUM_ITEMS = 32
CONTEXT_TOKENS = 64
CONTINUATION_TOKENS = 16
"""Defaults: 32 items per domain of 64 + 16 tokens (about 230 + 60 characters of English)."""
_NAME_HASH_CHARS = 8
_CUT_PROBE = 6
"""Tokens decoded on either side of a cut to tell whether it is clean."""


def task_name(domain: str) -> str:
    """`emomoe_continuation_<domain>`; a domain that is not already lower-case letters, digits and
    underscores gets a readable part and a short hash of its name, so that no two domains share a
    task (数学 and 代码, Code and code)."""
    if re.fullmatch(r"[0-9a-z_]+", domain):
        return f"{GROUP}_{domain}"
    readable = re.sub(r"[^0-9a-z]+", "_", domain.lower()).strip("_")
    digest = hashlib.sha256(domain.encode("utf-8")).hexdigest()[:_NAME_HASH_CHARS]
    return f"{GROUP}_{readable}_{digest}" if readable else f"{GROUP}_{digest}"


def clean_cut(tokenizer: TextTokenizer, tokens: Sequence[int], pos: int) -> int:
    """The first cut at or after `pos` that falls between two words: where the tokenizer's
    pre-tokenizer splits the text and not between two letters or digits ("x|1"), so before a
    space-led word, punctuation or a line break; never right after whitespace, nor inside a
    UTF-8 character.

    lm-eval scores a choice by the tokens of context + choice beyond those of the context alone
    (after moving the context's trailing whitespace into the choice). Choices that begin mid-word
    would be scored as odd byte sequences, and every model would pick the one that does not.
    """
    pre_tokenizer = tokenizer.tokenizer.pre_tokenizer
    while 0 < pos < len(tokens):
        left = tokenizer.decode(tokens[max(0, pos - _CUT_PROBE) : pos])
        right = tokenizer.decode(tokens[pos : pos + _CUT_PROBE])
        text = tokenizer.decode(tokens[max(0, pos - _CUT_PROBE) : pos + _CUT_PROBE])
        # A split character decodes to U+FFFD on both sides, but whole in the window.
        inside_word = (left[-1:] + right[:1]).isalnum()
        if text == left + right and not left[-1:].isspace() and not inside_word:
            starts = {start for _, (start, _) in pre_tokenizer.pre_tokenize_str(text)} if pre_tokenizer else None
            if starts is None or len(left) in starts:
                return pos
        pos += 1
    return pos


def continuation_items(
    documents: Sequence[Sequence[int]],
    tokenizer: TextTokenizer,
    *,
    num_items: int,
    context_tokens: int,
    continuation_tokens: int,
    rng: random.Random,
) -> list[dict[str, Any]]:
    """Up to `num_items` items {context, choices, label, document} from the documents of one domain.

    Passages are non-overlapping windows of `context_tokens + continuation_tokens` tokens, taken
    round-robin over the documents so that long documents do not dominate.
    """
    windows = spread_windows(documents, context_tokens + continuation_tokens, rng)
    if len({d for d, _ in windows}) < 2:
        return []

    decode = tokenizer.decode

    def continuation(d: int, start: int) -> tuple[int, str]:
        doc = documents[d]
        cut = clean_cut(tokenizer, doc, start + context_tokens)
        return cut, decode(doc[cut : clean_cut(tokenizer, doc, cut + continuation_tokens)])

    items = []
    for d, start in windows[:num_items]:
        doc = documents[d]
        begin = clean_cut(tokenizer, doc, start)
        cut, truth = continuation(d, start)
        others = [w for w in windows if w[0] != d]
        distractors: list[str] = []
        for od, ostart in rng.sample(others, len(others)):
            text = continuation(od, ostart)[1]
            if text != truth and text not in distractors and text.strip():
                distractors.append(text)
            if len(distractors) == NUM_CHOICES - 1:
                break
        if len(distractors) < NUM_CHOICES - 1 or not truth.strip():
            continue
        label = rng.randrange(NUM_CHOICES)
        choices = distractors[:label] + [truth] + distractors[label:]
        items.append({"context": decode(doc[begin:cut]), "choices": choices, "label": label, "document": d})
    return items


def write_continuation_tasks(
    store: str | Path | TokenStore,
    out_dir: str | Path,
    *,
    domains: list[str] | None = None,
    num_items: int = NUM_ITEMS,
    context_tokens: int = CONTEXT_TOKENS,
    continuation_tokens: int = CONTINUATION_TOKENS,
    seed: int = 0,
) -> dict[str, int]:
    """Write the tasks for `domains` (default: all, leaving out with a warning those with too few
    long held-out documents) of `store` into `out_dir` (atomically, replacing it): `num_items` test
    items per domain from its held-out documents and, where its training documents allow, as many
    train items from those.

    Returns the number of test items per task name. The store must keep its tokenizer (to write text).
    """
    if num_items < 1 or context_tokens < 1 or continuation_tokens < 1:
        raise ConfigError("num_items, context_tokens, continuation_tokens: expected positive integers")
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    if store.tokenizer_path is None:
        raise DataError(f"{store.path}: the store has no tokenizer, so its documents cannot be turned into text")
    tokenizer = load_tokenizer(store.tokenizer_path)
    names = domains or store.domains
    store.domain_ids(names)
    out_dir = Path(out_dir).resolve()
    counts = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for domain in names:
            name, data_files = task_name(domain), {}
            for split in (Split.VAL, Split.TRAIN):  # the test items first: without them, no task
                task_split = SPLITS[split]
                # The test items draw exactly as they did before there was a train split.
                rng = random.Random(f"{seed}:{domain}" + ("" if split is Split.VAL else f":{task_split}"))
                items = continuation_items(
                    split_documents(store, split, domain, num_items), tokenizer, num_items=num_items,
                    context_tokens=context_tokens, continuation_tokens=continuation_tokens, rng=rng,
                )
                if split is Split.VAL and not items:
                    break
                if split is Split.VAL:
                    counts[name] = len(items)
                if items:
                    data_files[task_split] = out_dir / (f"{name}.jsonl" if split is Split.VAL else f"{name}.train.jsonl")
                    (tmp / data_files[task_split].name).write_text(
                        "".join(json.dumps(i, ensure_ascii=False) + "\n" for i in items)
                    )
            if name not in counts:
                problem = (
                    f"{store.path}: domain {domain!r} has too few held-out documents of at least "
                    f"{context_tokens + continuation_tokens} tokens for the continuation task (need 2)"
                )
                if domains is not None:
                    raise DataError(problem)
                warn(f"{problem}; its task is left out")  # the other domains' tasks still run
                continue
            config = task_config(
                name, data_files, doc_to_text="context", doc_to_choice="choices",
                # The choices carry their own leading whitespace, exactly as it followed the passage.
                target_delimiter="", metadata={"domain": domain, "seed": seed},
            )
            (tmp / f"{name}.yaml").write_text(yaml.safe_dump(config))
        if not counts:
            raise DataError(f"{store.path}: no domain has enough long held-out documents for the continuation task")
        group = {
            "group": GROUP,
            "task": list(counts),
            "aggregate_metric_list": [
                {"metric": m, "aggregation": "mean", "weight_by_size": True} for m in ("acc", "acc_norm")
            ],
            "metadata": {"version": 1.0},
        }
        (tmp / f"{GROUP}.yaml").write_text(yaml.safe_dump(group, sort_keys=False))
    return counts
