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
from emomoe.config import ranged
from emomoe.data.store import TokenStore
from emomoe.data.tasks import TaskConfig
from emomoe.data.windows import BATCH_SIZE, TokenizerCheckConfig
from emomoe.errors import ConfigError, DataError, require
from emomoe.evaluate.continuation import GROUP
from emomoe.evaluate.shipped_tasks import ShippedTaskConfig, shipped, write_shipped_tasks
from emomoe.tables import markdown_table
from emomoe.train.provenance import run_store

OFFLINE_VARIABLES = ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
_STDERR_SUFFIX = "_stderr"


def go_offline() -> None:
    """Forbid the Hugging Face libraries any download (they read these variables when imported)."""
    for name in OFFLINE_VARIABLES:
        os.environ.setdefault(name, "1")


def load_tasks(
    tasks: Sequence[str], *, include_path: Sequence[str | Path] = (), num_fewshot: int | None = None, seed: int = 0
) -> dict[str, Any]:
    """lm-eval's loaded `tasks` (`TaskManager.load`: the tasks, with those of a group, and the groups),
    each set to `num_fewshot` examples per prompt (None: its own setting, 0 if it has none).

    lm-eval's own task library (14,000 YAML files: seconds to index) is read only if some task is
    not found in `include_path`.
    """
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
    return loaded


def evaluate_tasks(lm: Any, loaded: dict[str, Any], *, limit: int | float | None = None, seed: int = 0) -> dict[str, Any]:
    """Evaluate `lm` (an `EmoLM`) on tasks `load_tasks` loaded; returns lm-eval's results (no
    per-sample logs). The few-shot sampling starts from `seed` every time, so every model sees the
    same prompts.

    This calls lm-eval's `evaluate` the way `simple_evaluate` does, without the environment report
    that `simple_evaluate` adds (about 7 s per call here).
    """
    from lm_eval.evaluator import evaluate

    for task in loaded["tasks"].values():
        task.set_fewshot_seed(seed=seed)
    results = evaluate(lm=lm, task_dict=loaded, limit=limit, log_samples=False)
    keep = ("results", "groups", "group_subtasks", "versions", "n-shot", "n-samples")
    return {key: results[key] for key in keep if key in results}


def run_tasks(
    lm: Any,
    tasks: Sequence[str],
    *,
    include_path: Sequence[str | Path] = (),
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate `lm` (an `EmoLM`) on lm-eval `tasks`: `load_tasks`, then `evaluate_tasks`."""
    loaded = load_tasks(tasks, include_path=include_path, num_fewshot=num_fewshot, seed=seed)
    return evaluate_tasks(lm, loaded, limit=limit, seed=seed)


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
class LmEvalConfig(SelectionConfig, TaskConfig, ShippedTaskConfig, TokenizerCheckConfig):
    tasks: list[str] = dataclasses.field(default_factory=lambda: [GROUP])
    """lm-eval task or group names; the default is the shipped offline continuation task."""
    limit: float | None = None
    """At most this many items per task (a fraction of them if below 1); None means all."""
    batch_size: int = ranged(BATCH_SIZE, ge=1)
    """Requests per forward pass."""
    seed: int = 0
    """Seed of lm-eval's few-shot sampling and of the shipped tasks' items."""

    def validate(self) -> None:
        super().validate()
        if not self.tasks:
            raise ConfigError("tasks: expected at least one task")
        check_limit(self.limit)

    @property
    def item_limit(self) -> int | float | None:
        return item_limit(self.limit)


def check_limit(limit: float | None) -> None:
    if limit is not None and limit <= 0:
        raise ConfigError(f"limit: expected a number of items > 0, got {limit}")


def item_limit(limit: float | None) -> int | float | None:
    """`limit` as lm-eval reads it: a count, or a fraction below 1."""
    return limit if limit is None or limit < 1 else int(limit)


def shipped_task_paths(
    tasks: Sequence[str], out_dir: Path, cfg: ShippedTaskConfig, seed: int, *, data: str | Path | None,
    checkpoint: str | Path, any_tokenizer: bool = False,
) -> list[Path]:
    """Build the shipped tasks that `tasks` name in `out_dir` from the token store `data` (default:
    that of the checkpoint's run), whose tokenizer must be the checkpoint's (unless `any_tokenizer`);
    returns the include paths to add (none if no shipped task is named)."""
    if not shipped(tasks):
        return []
    store = data if data is not None else run_store(checkpoint)
    if store is None:
        raise DataError(
            f"{checkpoint}: the shipped tasks ({', '.join(shipped(tasks))}) need a token store: pass --data STORE "
            "(none found from the checkpoint's run)"
        )
    store = TokenStore.open(store)
    load_config(checkpoint).check_tokenizer(store.tokenizer_hash, checkpoint, any_tokenizer=any_tokenizer)
    write_shipped_tasks(store, out_dir, tasks, cfg, seed)
    return [out_dir]


def evaluate_checkpoint_tasks(
    checkpoint: str | Path,
    cfg: LmEvalConfig,
    *,
    tokenizer: str | Path | None = None,
    data: str | Path | None = None,
) -> dict[str, Any]:
    """Run lm-eval tasks on a checkpoint or subset. The shipped tasks named
    (`emomoe_continuation[_<domain>]`, `emomoe_domain`) are built first from the documents of
    `data` (default: the token store of the checkpoint's run), `cfg.num_items` per domain and
    split (`emomoe.evaluate.shipped_tasks`). Offline unless `cfg.online`."""
    require("lm-eval tasks", "eval", "lm_eval")
    from emomoe.experiments.harness import EmoLM

    if not cfg.online:
        go_offline()
    with tempfile.TemporaryDirectory(prefix="emomoe-tasks-") as tmp:
        shipped_paths = shipped_task_paths(
            cfg.tasks, Path(tmp) / "tasks", cfg, cfg.seed, data=data, checkpoint=checkpoint,
            any_tokenizer=cfg.any_tokenizer,
        )
        lm = EmoLM(
            checkpoint=str(checkpoint), tokenizer=tokenizer, batch_size=cfg.batch_size,
            selection=cfg.selection or None, auto_tokens=cfg.auto_tokens, any_tokenizer=cfg.any_tokenizer,
        )
        return run_tasks(
            lm, cfg.tasks, include_path=[*cfg.include_path, *shipped_paths], limit=cfg.item_limit,
            num_fewshot=cfg.num_fewshot, seed=cfg.seed,
        )


def scores_table(scores: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per task with its item count and metrics."""
    metrics = sorted({m for s in scores.values() for m in s if m != "n"})
    rows = [
        [task, str(int(s.get("n", 0))), *(f"{s[m]:.3f}" if m in s else "" for m in metrics)]
        for task, s in scores.items()
    ]
    return markdown_table(["task", "n", *metrics], rows)
