"""Calibration and fine-tuning examples from an lm-eval task, as the official `selective_hf`
pipeline makes them: each document of the task's training or validation split, formatted as the
task formats its prompts (its few-shot demonstrations included), followed by its gold answer.

- multiple choice: the prompt, the target delimiter and the right choice (for tasks whose choices
  are the contexts, such as Winogrande, the right context and the shared continuation);
- generation: the prompt, the target delimiter and the first gold answer;
- loglikelihood: the prompt and the target.

A document is never among its own demonstrations (lm-eval leaves it out only when the
demonstrations come from the split evaluated; here they may come from the document's own split).

Which splits: the task is evaluated on its test split (its validation split if it has no test
split), which is held out. `merged` (the paper's default) pools the training and validation
documents for both calibration and fine-tuning; `separate` calibrates on the validation documents
and fine-tunes on the training ones. A split the task does not configure is still used where its
dataset has one by the usual name ("train", "validation"): lm-eval's MMLU names only its test and
few-shot splits. A task whose pool and held-out split overlap, by name or by a shared document,
or whose demonstrations come from the held-out split, is refused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from emomoe.checkpoint import load_config
from emomoe.data.pairs import Example
from emomoe.data.store import TokenStore
from emomoe.data.tasks import TaskDataConfig, TaskSplits
from emomoe.data.tokenizer import TextTokenizer
from emomoe.errors import ConfigError, DataError
from emomoe.evaluate.shipped_tasks import ShippedTaskConfig
from emomoe.experiments.benchmarks import go_offline, load_tasks, shipped_task_paths
from emomoe.io import refuse_existing
from emomoe.model import ModelConfig
from emomoe.select.calibration import Calibration, example_calibration
from emomoe.select.subset import SelectConfig, select_subset
from emomoe.train.provenance import checkpoint_tokenizer, find_tokenizer

TRAIN, VALIDATION = "train", "validation"
"""The pool splits, and the dataset split names used when a task does not configure them."""


@dataclasses.dataclass(frozen=True)
class TaskText:
    prompt: str
    answer: str


@dataclasses.dataclass
class TaskExamples:
    """The examples of one task (or of every task of a group, pooled)."""

    task: str
    calibration: list[TaskText]
    finetune: list[TaskText]
    info: dict[str, Any]
    """The splits each role drew on, per task of the group, and the examples' counts."""


def task_examples(task: str, loaded: dict[str, Any], splits: TaskSplits | str) -> TaskExamples:
    """The examples of `task`, from lm-eval's `loaded` tasks (`benchmarks.load_tasks([task])`)."""
    calibration, finetune, sources = [], [], {}
    for name, leaf in loaded["tasks"].items():
        pools = _pools(name, leaf)
        roles = {"calibration": [TRAIN, VALIDATION], "finetune": [TRAIN, VALIDATION]}
        if splits == TaskSplits.SEPARATE:
            roles = {"calibration": [VALIDATION], "finetune": [TRAIN]}
        for role, wanted in roles.items():
            if not any(pools.get(s) for s in wanted):
                raise DataError(
                    f"task {name}: no {' or '.join(wanted)} documents to draw {role} examples from "
                    f"(--splits {splits}); the split it is evaluated on is held out"
                )
        format_doc = Formatter(name, leaf)
        formatted = {split: [format_doc(doc) for doc in docs] for split, (_, docs) in pools.items()}
        calibration += [t for s in roles["calibration"] for t in formatted.get(s, [])]
        finetune += [t for s in roles["finetune"] for t in formatted.get(s, [])]
        sources[name] = {
            "held_out": _held_out(leaf),
            **{role: [pools[s][0] for s in wanted if s in pools] for role, wanted in roles.items()},
            "num_fewshot": leaf.get_config("num_fewshot") or 0,
        }
    info = {"task": task, "splits": str(splits), "sources": sources, "num_calibration": len(calibration),
            "num_finetune": len(finetune)}
    return TaskExamples(task, calibration, finetune, info)


def _held_out(leaf: Any) -> str:
    """The split lm-eval evaluates the task on (`Task.eval_docs`)."""
    return leaf.config.test_split if leaf.has_test_docs() else leaf.config.validation_split


def _pools(name: str, leaf: Any) -> dict[str, tuple[str, list[dict[str, Any]]]]:
    """Role (train, validation) -> (split name, documents) of the task's pool, checked against its
    held-out split."""
    held_out = _held_out(leaf)
    configured = {TRAIN: leaf.config.training_split, VALIDATION: leaf.config.validation_split}
    pools = {}
    for role, split in configured.items():
        if split is not None and split == held_out:
            if role == TRAIN:
                raise DataError(f"task {name}: its {role} split '{split}' is the split it is evaluated on")
            continue  # a task without a test split is evaluated on its validation split, held out
        if split is None and role in leaf.dataset and role != held_out:
            split = role
        if split is not None:
            pools[role] = (split, _documents(leaf, split))
    if (leaf.get_config("num_fewshot") or 0) > 0 and _fewshot_split(leaf) == held_out:
        raise DataError(
            f"task {name}: its few-shot examples come from '{held_out}', the split it is evaluated on, so "
            "calibration prompts would hold test answers; use --num-fewshot 0 or a task with another few-shot split"
        )
    held_out_docs = {_key(doc) for doc in _documents(leaf, held_out)}
    for role, (split, docs) in pools.items():
        shared = sum(_key(doc) in held_out_docs for doc in docs)
        if shared:
            raise DataError(
                f"task {name}: {shared} of the {len(docs)} documents of its {role} split '{split}' are also in "
                f"'{held_out}', the split it is evaluated on"
            )
    return pools


def _fewshot_split(leaf: Any) -> str | None:
    """The split the task's demonstrations come from: the one it names, else lm-eval's rule (the
    training split, else the validation split, else the test split); None for fixed samples."""
    if leaf.fewshot_cfg.split is not None or leaf.fewshot_cfg.samples is not None:
        return leaf.fewshot_cfg.split
    if leaf.has_training_docs():
        return leaf.config.training_split
    return leaf.config.validation_split if leaf.has_validation_docs() else leaf.config.test_split


def _documents(leaf: Any, split: str) -> list[dict[str, Any]]:
    docs = leaf.dataset[split]
    return list(leaf.config.process_docs(docs) if leaf.config.process_docs is not None else docs)


def _key(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, default=str)


def format_example(name: str, leaf: Any, doc: dict[str, Any]) -> TaskText:
    """`doc` as the task prompts it (with its few-shot demonstrations), and its gold answer."""
    return Formatter(name, leaf)(doc)


class Formatter:
    """Formats the documents of one task (`format_example`), knowing which are also among its
    few-shot demonstrations: those are left out of their own draw."""

    def __init__(self, name: str, leaf: Any):
        self.name, self.leaf = name, leaf
        self.num_fewshot = leaf.get_config("num_fewshot") or 0
        self.sampler = getattr(leaf, "sampler", None) if self.num_fewshot else None
        self.demonstrations = {_key(d) for d in self.sampler.fewshot_docs()} if self.sampler else set()

    def __call__(self, doc: dict[str, Any]) -> TaskText:
        leaf = self.leaf
        with self._demonstrations_without(doc):
            context = leaf.fewshot_context(doc, self.num_fewshot)
        delimiter, target = leaf.config.target_delimiter, leaf.doc_to_target(doc)
        if leaf.OUTPUT_TYPE == "multiple_choice":
            if leaf.multiple_input:  # the choices are the contexts, the target their shared continuation
                return TaskText(context[leaf.doc_to_text(doc)], f"{delimiter}{target}")
            choices = leaf.doc_to_choice(doc)
            gold = target[0] if isinstance(target, list) else target
            return TaskText(context, f"{delimiter}{choices[choices.index(gold) if isinstance(gold, str) else gold]}")
        if leaf.OUTPUT_TYPE == "generate_until":
            return TaskText(context, f"{delimiter}{target[0] if isinstance(target, list) else target}")
        if leaf.OUTPUT_TYPE == "loglikelihood":
            return TaskText(context, str(target))
        raise ConfigError(
            f"task {self.name}: {leaf.OUTPUT_TYPE} tasks have no gold answer to calibrate on "
            "(multiple_choice, generate_until and loglikelihood tasks do)"
        )

    @contextlib.contextmanager
    def _demonstrations_without(self, doc: dict[str, Any]) -> Iterator[None]:
        """While formatting `doc`, a sampler that draws from its split leaves it out."""
        if _key(doc) not in self.demonstrations:
            yield
            return
        if len(self.demonstrations) <= self.num_fewshot:
            raise DataError(
                f"task {self.name}: {self.num_fewshot}-shot prompts of its own few-shot documents need "
                f"{self.num_fewshot + 1} of them (a document is never its own demonstration), it has "
                f"{len(self.demonstrations)}; lower --num-fewshot"
            )
        sampler, sample = self.sampler, self.sampler.sample
        sampler.sample = lambda n, eval_doc=None, **kwargs: sample(n, eval_doc=doc, **kwargs)
        try:
            yield
        finally:
            del sampler.sample  # back to the class's method


def tokenize(texts: Sequence[TaskText], tokenizer: TextTokenizer) -> list[Example]:
    """Prompt and answer tokenized separately, so the boundary between them is exact."""
    return [Example(tokenizer.encode(t.prompt), tokenizer.encode(t.answer)) for t in texts]


def subsample(items: Sequence[Any], num: int, seed: int) -> list[Any]:
    """The first `num` items (0: all) of a seeded permutation, as the official scripts draw their
    calibration examples: a smaller draw is the start of a larger one."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    return [items[i] for i in order[: num or len(items)]]


def task_calibration(
    examples: TaskExamples, tokenizer: TextTokenizer, *, num_calib: int, seed: int, seq_len: int, batch_size: int
) -> Calibration:
    """`num_calib` (0: all) of the task's calibration examples as calibration rows for `select`."""
    picked = tokenize(subsample(examples.calibration, num_calib, seed), tokenizer)
    info = {
        "source": "task", "task": examples.task, "splits": examples.info["splits"],
        "sources": examples.info["sources"], "num_examples": len(picked), "seed": seed, "seq_len": seq_len,
        "vocab_size": tokenizer.vocab_size, "tokenizer_hash": tokenizer.hash,
    }
    return example_calibration(picked, tokenizer.eos_id, seq_len=seq_len, batch_size=batch_size, info=info)


def load_task_examples(
    task: str, cfg: TaskDataConfig, *, seed: int, data: str | Path | None, checkpoint: str | Path,
    shipped: ShippedTaskConfig | None = None,
) -> TaskExamples:
    """The examples of `task` as `cfg` says (offline unless `cfg.online`); a shipped task is built
    from the token store `data` (default: that of the checkpoint's run) with `shipped` settings."""
    if not cfg.online:
        go_offline()
    with tempfile.TemporaryDirectory(prefix="emomoe-tasks-") as tmp:
        paths = shipped_task_paths([task], Path(tmp), shipped or ShippedTaskConfig(), seed, data=data,
                                   checkpoint=checkpoint)
        loaded = load_tasks([task], include_path=[*cfg.include_path, *paths], num_fewshot=cfg.num_fewshot, seed=seed)
        # The documents are read while the shipped tasks' files still exist.
        return task_examples(task, loaded, cfg.splits)


def model_tokenizer(
    checkpoint: str | Path, cfg: ModelConfig, *, tokenizer: str | Path | None = None, data: str | Path | None = None
) -> TextTokenizer:
    """The tokenizer that turns a task's text into the model's ids: `tokenizer` if given, else the
    checkpoint's own (beside it, its source's, its run's), else that of the token store `data`."""
    path = tokenizer or find_tokenizer(checkpoint)
    if path is None and data is not None:
        path = TokenStore.open(data).tokenizer_path
    return checkpoint_tokenizer(checkpoint, cfg, path)


def select_on_task(
    checkpoint: str | Path,
    out_dir: str | Path,
    cfg: SelectConfig,
    *,
    task: str,
    data: str | Path | None = None,
    tokenizer: str | Path | None = None,
    force: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """`select_subset` calibrated on `cfg.num_calib` examples of `task` (`--task`), tokenized with
    the model's tokenizer (`model_tokenizer`); returns the selection record."""
    refuse_existing(out_dir, force)
    model_cfg = load_config(checkpoint)
    tok = model_tokenizer(checkpoint, model_cfg, tokenizer=tokenizer, data=data)
    examples = load_task_examples(task, cfg, seed=cfg.seed, data=data, checkpoint=checkpoint)
    calibration = task_calibration(
        examples, tok, num_calib=cfg.num_calib, seed=cfg.seed, seq_len=cfg.seq_len or model_cfg.max_seq_len,
        batch_size=cfg.batch_size,
    )
    return select_subset(checkpoint, out_dir, cfg, calibration=calibration, force=force, progress=progress)
