"""Running lm-evaluation-harness tasks on emomoe models, offline by default.

lm-eval and the Hugging Face libraries under it are imported only here and in `harness`, and only
when a run starts: they take seconds to import, and the offline switches must be set before.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emomoe.checkpoint import load_config
from emomoe.checkpoint.selection import SelectionConfig
from emomoe.data.store import TokenStore
from emomoe.data.windows import BATCH_SIZE, TokenizerCheckConfig
from emomoe.errors import ConfigError, DataError, require
from emomoe.evaluate.continuation import (
    CONTEXT_TOKENS,
    CONTINUATION_TOKENS,
    GROUP,
    NUM_ITEMS,
    write_continuation_tasks,
)
from emomoe.tables import markdown_table
from emomoe.train.provenance import run_store

OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_STDERR_SUFFIX = "_stderr"


def go_offline() -> None:
    """Forbid the Hugging Face libraries any download (they read these variables when imported)."""
    for name in OFFLINE_VARIABLES:
        os.environ.setdefault(name, "1")


def run_tasks(
    lm: Any,
    tasks: Sequence[str],
    *,
    include_path: Sequence[str | Path] = (),
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate `lm` (an `EmoLM`) on lm-eval `tasks`; returns lm-eval's results (no per-sample logs).

    lm-eval's own task library (14,000 YAML files: seconds to index) is read only if some task is
    not found in `include_path`. This calls lm-eval's `evaluate` the way `simple_evaluate` does,
    without the environment report that `simple_evaluate` adds (about 7 s per call here).
    """
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in include_path] or None
    manager = TaskManager(include_path=paths, include_defaults=False)
    if any(task not in manager.all_tasks for task in tasks):
        manager = TaskManager(include_path=paths)
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise ConfigError(f"tasks: unknown lm-eval task(s) {', '.join(unknown)} (see `lm-eval ls tasks`)")
    loaded = manager.load(list(tasks))
    for task in loaded["tasks"].values():
        if num_fewshot is not None and task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)
    results = evaluate(lm=lm, task_dict=loaded, limit=limit, log_samples=False)
    keep = ("results", "groups", "group_subtasks", "versions", "n-shot", "n-samples")
    return {key: results[key] for key in keep if key in results}


def task_scores(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Task (or group) -> metric -> value, from lm-eval's results ("acc,none" becomes "acc"), and the
    number of items as "n"."""
    scores = {}
    for task, entries in results["results"].items():
        metrics = {}
        for key, value in entries.items():
            metric, sep, _ = key.partition(",")
            if sep and not metric.endswith(_STDERR_SUFFIX) and isinstance(value, (int, float)):
                metrics[metric] = float(value)
        if isinstance(entries.get("sample_len"), int):
            metrics["n"] = entries["sample_len"]
        scores[task] = metrics
    return scores


@dataclasses.dataclass
class LmEvalConfig(SelectionConfig, TokenizerCheckConfig):
    tasks: list[str] = dataclasses.field(default_factory=lambda: [GROUP])
    """lm-eval task or group names; the default is the shipped offline continuation task."""
    include_path: list[str] = dataclasses.field(default_factory=list)
    """Folders of your own task YAMLs."""
    limit: float | None = None
    """At most this many items per task (a fraction of them if below 1); None means all."""
    num_fewshot: int | None = None
    """Examples in each prompt; None means each task's own setting (0 if it has none)."""
    batch_size: int = BATCH_SIZE
    """Requests per forward pass."""
    seed: int = 0
    """Seed of lm-eval's few-shot sampling and of the continuation task's distractors."""
    num_items: int = NUM_ITEMS
    """Continuation-task items per domain."""
    context_tokens: int = CONTEXT_TOKENS
    """Continuation-task passage length, in tokens."""
    continuation_tokens: int = CONTINUATION_TOKENS
    """Continuation-task choice length, in tokens."""
    online: bool = False
    """Let lm-eval download task data; offline otherwise."""

    def validate(self) -> None:
        super().validate()
        for name in ("batch_size", "num_items", "context_tokens", "continuation_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if not self.tasks:
            raise ConfigError("tasks: expected at least one task")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit: expected a number of items > 0, got {self.limit}")

    @property
    def item_limit(self) -> int | float | None:
        """`limit` as lm-eval reads it: a count, or a fraction below 1."""
        return self.limit if self.limit is None or self.limit < 1 else int(self.limit)


def evaluate_checkpoint_tasks(
    checkpoint: str | Path,
    cfg: LmEvalConfig,
    *,
    tokenizer: str | Path | None = None,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Run lm-eval tasks on a checkpoint or subset. The shipped continuation tasks
    (`emomoe_continuation[_<domain>]`) are built first from the held-out documents of `data`
    (default: the token store of the checkpoint's run), `cfg.num_items` per domain (see
    `write_continuation_tasks`). Offline unless `cfg.online`."""
    require("lm-eval tasks", "eval", "lm_eval")
    from emomoe.experiments.harness import EmoLM

    if not cfg.online:
        go_offline()
    include = list(cfg.include_path)
    with tempfile.TemporaryDirectory(prefix="emomoe-tasks-") as tmp:
        if any(task.startswith(GROUP) for task in cfg.tasks):
            store = data if data is not None else run_store(checkpoint)
            if store is None:
                raise DataError(
                    f"{checkpoint}: the continuation tasks need a token store: pass --data STORE "
                    "(none found from the checkpoint's run)"
                )
            store = TokenStore.open(store)
            load_config(checkpoint).check_tokenizer(store.tokenizer_hash, checkpoint, any_tokenizer=cfg.any_tokenizer)
            write_continuation_tasks(
                store, Path(tmp) / "tasks", num_items=cfg.num_items, context_tokens=cfg.context_tokens,
                continuation_tokens=cfg.continuation_tokens, seed=cfg.seed,
            )
            include.append(Path(tmp) / "tasks")
        lm = EmoLM(
            checkpoint=str(checkpoint), tokenizer=tokenizer, batch_size=cfg.batch_size,
            selection=cfg.selection or None, auto_tokens=cfg.auto_tokens, any_tokenizer=cfg.any_tokenizer,
        )
        return run_tasks(
            lm, cfg.tasks, include_path=include, limit=cfg.item_limit, num_fewshot=cfg.num_fewshot, seed=cfg.seed
        )


def scores_table(scores: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per task with its item count and metrics."""
    metrics = sorted({m for s in scores.values() for m in s if m != "n"})
    rows = [
        [task, str(int(s.get("n", 0))), *(f"{s[m]:.3f}" if m in s else "" for m in metrics)]
        for task, s in scores.items()
    ]
    return markdown_table(["task", "n", *metrics], rows)
