"""Running lm-evaluation-harness tasks on emomoe models, offline by default.

lm-eval and the Hugging Face libraries under it are imported only here and in `harness`, and only
when a run starts: they take seconds to import, and the offline switches must be set before.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emomoe.errors import ConfigError, DataError
from emomoe.evaluate.continuation import (
    CONTEXT_TOKENS,
    CONTINUATION_TOKENS,
    GROUP,
    NUM_ITEMS,
    write_continuation_tasks,
)
from emomoe.evaluate.provenance import run_store
from emomoe.tables import markdown_table

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


def evaluate_checkpoint_tasks(
    checkpoint: str | Path,
    tasks: Sequence[str],
    *,
    tokenizer: str | Path | None = None,
    data: str | Path | None = None,
    include_path: Sequence[str | Path] = (),
    num_items: int = NUM_ITEMS,
    context_tokens: int = CONTEXT_TOKENS,
    continuation_tokens: int = CONTINUATION_TOKENS,
    batch_size: int = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run lm-eval `tasks` on a checkpoint or subset. The shipped continuation tasks
    (`emomoe_continuation[_<domain>]`) are built first from the held-out documents of `data`
    (default: the token store of the checkpoint's run), `num_items` per domain (see
    `write_continuation_tasks`)."""
    from emomoe.experiments.harness import EmoLM

    include = list(include_path)
    with tempfile.TemporaryDirectory(prefix="emomoe-tasks-") as tmp:
        if any(task.startswith(GROUP) for task in tasks):
            store = data if data is not None else run_store(checkpoint)
            if store is None:
                raise DataError(
                    f"{checkpoint}: the continuation tasks need a token store: pass --data STORE "
                    "(none found from the checkpoint's run)"
                )
            write_continuation_tasks(
                store, Path(tmp) / "tasks", num_items=num_items, context_tokens=context_tokens,
                continuation_tokens=continuation_tokens, seed=seed,
            )
            include.append(Path(tmp) / "tasks")
        lm = EmoLM(checkpoint=str(checkpoint), tokenizer=tokenizer, batch_size=batch_size)
        return run_tasks(lm, tasks, include_path=include, limit=limit, num_fewshot=num_fewshot, seed=seed)


def scores_table(scores: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per task with its item count and metrics."""
    metrics = sorted({m for s in scores.values() for m in s if m != "n"})
    rows = [
        [task, str(int(s.get("n", 0))), *(f"{s[m]:.3f}" if m in s else "" for m in metrics)]
        for task, s in scores.items()
    ]
    return markdown_table(["task", "n", *metrics], rows)
