"""Per-layer expert counts that fit a size budget, from one ranking of the routed experts of every layer.

A uniform keep gives every MoE layer the same count. A budget (`select --budget-gb`, `--keep-params`)
fixes the size of the subset instead and lets the layers compete for it: every layer first keeps its
top-k experts (so each token still gets its full top-k), then the remaining experts of all layers
enter in one ranking, best first, until the next one does not fit.

The ranking compares a layer's expert with another layer's by its share of its own layer's score
(the router mass, which sums to 1 per layer, or EASY-EP, REAP, ...). Since every routed expert of a
layer costs the same, taking experts in this order keeps, for the size, the largest sum over layers
of the score share kept. The official EMO code prunes to a per-layer schedule given by hand
(`greedy_prune_layerwise_variable`); this chooses the schedule.

Sizes are whatever `size` says a subset with those counts takes: the bytes of its tensors as
written, or its parameters. Both grow by a fixed amount per expert kept in a layer, so the cost of
one more expert is measured once per layer.

Legend: E routed experts of a layer.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

import torch

from emomoe.errors import ConfigError

SubsetSize = Callable[[list[int]], int]
"""The size of the subset keeping these routed experts per MoE layer."""


class BudgetUnit(enum.StrEnum):
    BYTES = "bytes"
    """The subset's tensor bytes, in their stored dtype, as written."""
    PARAMS = "params"
    """The subset's total parameters."""


@dataclasses.dataclass(frozen=True)
class Budget:
    limit: int
    unit: BudgetUnit
    given: str
    """The setting as the user spelled it, for messages ("budget_gb 0.05")."""

    def show(self, size: int) -> str:
        return f"{show_bytes(size)} ({size:,} bytes)" if self.unit is BudgetUnit.BYTES else f"{size:,} parameters"


def show_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def budget_of(budget_gb: float | None, keep_params: int | None) -> Budget | None:
    """The budget the settings give (at most one of them is set), or None for none."""
    if budget_gb is not None:
        return Budget(round(budget_gb * 1e9), BudgetUnit.BYTES, f"budget_gb {budget_gb:g}")
    if keep_params is not None:
        return Budget(keep_params, BudgetUnit.PARAMS, f"keep_params {keep_params:,}")
    return None


def check_budget(floor: list[int], size: SubsetSize, budget: Budget) -> int:
    """The size of the smallest subset, `floor` experts per layer; ConfigError if it exceeds `budget`."""
    smallest = size(floor)
    if smallest > budget.limit:
        raise ConfigError(
            f"{budget.given}: the smallest subset (the top-k routed experts in every layer, the shared experts "
            f"and everything outside the experts) takes {budget.show(smallest)}"
        )
    return smallest


def fit_counts(shares: list[torch.Tensor], floor: list[int], size: SubsetSize, budget: Budget) -> list[int]:
    """Routed experts to keep per MoE layer: `floor` in every layer, then the experts of the global
    ranking of `shares` (per layer, every routed expert's share of its layer's score [E]) in order,
    stopping at the first that would take the subset past `budget`."""
    counts = list(floor)
    spent = check_budget(floor, size, budget)
    cost = [size([n + (i == layer) for i, n in enumerate(counts)]) - spent for layer in range(len(counts))]
    # Ties go to the expert ranked higher in its layer, then to the earlier layer.
    candidates = [
        (-share, rank, layer)
        for layer, shares_E in enumerate(shares)
        for rank, share in enumerate(shares_E.sort(descending=True).values.tolist())
        if rank >= floor[layer]
    ]
    for _, _, layer in sorted(candidates):
        if spent + cost[layer] > budget.limit:
            break
        counts[layer] += 1
        spent += cost[layer]
    return counts
