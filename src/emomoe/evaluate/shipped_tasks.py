"""The lm-eval tasks that ship with emomoe, built at run time from a token store: the
continuation task (`emomoe_continuation`, one task per domain) and the domain task
(`emomoe_domain`), and the settings every verb that builds them shares."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from emomoe.config import Config, ranged
from emomoe.data.store import TokenStore
from emomoe.evaluate.continuation import CONTEXT_TOKENS, CONTINUATION_TOKENS, GROUP, NUM_ITEMS, write_continuation_tasks
from emomoe.evaluate.domain_task import DOMAIN_TASK, write_domain_task

SHIPPED_TASKS = (GROUP, DOMAIN_TASK)
"""The prefixes of the shipped tasks' names."""


@dataclasses.dataclass
class ShippedTaskConfig(Config):
    num_items: int = ranged(NUM_ITEMS, ge=1)
    """Items per domain of the shipped tasks (emomoe_continuation, emomoe_domain), in each split."""
    context_tokens: int = ranged(CONTEXT_TOKENS, ge=1)
    """Passage length of the shipped tasks, in tokens."""
    continuation_tokens: int = ranged(CONTINUATION_TOKENS, ge=1)
    """Continuation-task choice length, in tokens."""


def shipped(tasks: Sequence[str]) -> list[str]:
    """The shipped tasks that `tasks` name (a task, or one of its per-domain tasks)."""
    return [prefix for prefix in SHIPPED_TASKS if any(task.startswith(prefix) for task in tasks)]


def write_shipped_tasks(
    store: str | Path | TokenStore, out_dir: str | Path, tasks: Sequence[str], cfg: ShippedTaskConfig, seed: int
) -> list[str]:
    """Write the shipped tasks that `tasks` name, each into a folder of its own in `out_dir`;
    returns their names."""
    named = shipped(tasks)
    for task in named:
        if task == GROUP:
            write_continuation_tasks(
                store, Path(out_dir) / task, num_items=cfg.num_items, context_tokens=cfg.context_tokens,
                continuation_tokens=cfg.continuation_tokens, seed=seed,
            )
        else:
            write_domain_task(store, Path(out_dir) / task, num_items=cfg.num_items, context_tokens=cfg.context_tokens,
                              seed=seed)
    return named
