"""Prompt/answer examples for fine-tuning, from jsonl records like {"prompt": "...", "answer": "..."}.

Legend: B batch (examples), S sequence.

Every example is one row: its prompt tokens, its answer tokens and EOS, cut to `seq_len + 1`
tokens. Rows are padded with EOS to the longest row of the batch, and padded labels are ignored.
With `answer_only` (the paper's fine-tuning recipe), a label is also ignored while the token it
asks for still belongs to the prompt, so the loss covers the answer and its closing EOS; a row too
long for the window then keeps its end (the prompt loses its beginning), so that it still has an
answer to learn. Otherwise a row keeps its beginning.
Prompt and answer are tokenized separately, so the boundary between them is exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from emomoe.data.readers import jsonl_records
from emomoe.data.tokenizer import TextTokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.model.docs import doc_ids_from_eos
from emomoe.model.losses import IGNORE_INDEX

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Example:
    prompt_ids: list[int]
    answer_ids: list[int]


def read_pairs(
    path: str | Path, tokenizer: TextTokenizer, *, prompt_field: str = "prompt", answer_field: str = "answer"
) -> list[Example]:
    """Tokenize every record of a jsonl file (plain, .gz or .zst); DataError names the line of a bad one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such prompt/answer file")
    examples = []
    for where, record in jsonl_records(path, strict=True):
        for field in (prompt_field, answer_field):
            if not isinstance(record.get(field), str):
                raise DataError(f"{where}: expected a string field '{field}'")
        if not record[answer_field]:
            raise DataError(f"{where}: empty answer field '{answer_field}'")
        examples.append(Example(tokenizer.encode(record[prompt_field]), tokenizer.encode(record[answer_field])))
    if not examples:
        raise DataError(f"{path}: no prompt/answer records")
    return examples


def pair_batch(examples: list[Example], eos_id: int, *, seq_len: int, answer_only: bool) -> Batch:
    """One padded batch of examples (see the module docstring for the labels)."""
    whole = [e.prompt_ids + e.answer_ids + [eos_id] for e in examples]
    rows = [w[-(seq_len + 1) :] if answer_only else w[: seq_len + 1] for w in whole]
    width = max(len(r) for r in rows) - 1
    input_ids_BS = np.full((len(rows), width), eos_id, dtype=np.int64)
    labels_BS = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    for b, (row, example) in enumerate(zip(rows, examples)):
        input_ids_BS[b, : len(row) - 1] = row[:-1]
        labels_BS[b, : len(row) - 1] = row[1:]
        if answer_only:
            # Label s asks for token s + 1, which is a prompt token while s + 1 < the prompt tokens left.
            prompt_left = len(example.prompt_ids) - (len(whole[b]) - len(row))
            labels_BS[b, : max(prompt_left - 1, 0)] = IGNORE_INDEX
    input_ids = torch.from_numpy(input_ids_BS)
    return {
        "input_ids_BS": input_ids,
        "labels_BS": torch.from_numpy(labels_BS),
        "doc_ids_BS": doc_ids_from_eos(input_ids, eos_id),
        "domain_ids_BS": torch.zeros_like(input_ids),
    }


class PairLoader:
    """Infinite batches of examples, reshuffled every epoch from `seed`."""

    def __init__(self, examples: list[Example], eos_id: int, *, seq_len: int, batch_size: int, answer_only: bool, seed: int = 0):
        if seq_len < 1 or batch_size < 1:
            raise ConfigError(f"seq_len and batch_size must be positive, got {seq_len} and {batch_size}")
        self.examples, self.eos_id = examples, eos_id
        self.seq_len, self.batch_size, self.answer_only, self.seed = seq_len, batch_size, answer_only, seed
        self.position = 0

    @property
    def num_examples(self) -> int:
        return len(self.examples)

    def __iter__(self) -> Iterator[Batch]:
        return self

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed, "num_examples": self.num_examples}

    def load_state_dict(self, state: dict[str, int]) -> None:
        for key in ("seed", "num_examples"):
            if state.get(key) != self.state_dict()[key]:
                raise DataError(f"cannot resume the example order: saved {key} {state.get(key)}, now {self.state_dict()[key]}")
        self.position = int(state["position"])

    def __next__(self) -> Batch:
        return self.take(self.batch_size)

    def take(self, num_examples: int) -> Batch:
        """The next `num_examples` examples as one batch (fewer than `batch_size` end an epoch exactly)."""
        picked = []
        for position in range(self.position, self.position + num_examples):
            epoch, i = divmod(position, self.num_examples)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)
            picked.append(self.examples[int(order[i])])
        self.position += num_examples
        return pair_batch(picked, self.eos_id, seq_len=self.seq_len, answer_only=self.answer_only)
