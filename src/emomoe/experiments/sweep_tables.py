"""Markdown tables of a sweep: per-domain losses, mean increases per selection method, whether the
first model's advantage holds under every method, subset sizes, and the same bytes spent evenly or by
one ranking of every layer's experts."""

from __future__ import annotations

import math
import statistics
from typing import Any

from emomoe.analyze.sweep_results import (
    FULL,
    domains_of,
    experts_kept,
    for_method,
    increase,
    keeps_descending,
    mean_increase,
    methods_of,
)
from emomoe.tables import markdown_table


def _signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.3f}"


def subset_loss_table(results: dict[str, Any]) -> str:
    """One row per (method, model, keep): the loss on every domain with its increase over the full model."""
    domains = domains_of(for_method(results, methods_of(results)[0]))
    rows = []
    for method in methods_of(results):
        view = for_method(results, method)
        for model, per_keep in view["loss"].items():
            for keep in keeps_descending(view):
                if keep not in per_keep:
                    continue
                cells = [method, model, keep]
                for domain in domains:
                    loss = per_keep[keep].get(domain, math.nan)
                    delta = "" if keep == FULL else f" ({_signed(increase(view, model, keep, domain))})"
                    cells.append(f"{loss:.3f}{delta}")
                cells.append("0" if keep == FULL else _signed(mean_increase(view, model, keep)))
                rows.append(cells)
    return markdown_table(["method", "model", "keep", *domains, "mean increase"], rows)


def summary_table(results: dict[str, Any]) -> str:
    """Mean loss increase per (method, keep fraction), one column per model, and the ratio of every
    other model's increase to the last model's (the standard MoE, when it comes last).

    When the results record the subsets' sizes, each fraction is also spelled as routed experts
    kept per layer and as the paper's N, which counts the shared experts (N of 128 there).
    """
    methods = methods_of(results)
    models = list(results["loss"][methods[0]])
    views = {method: for_method(results, method) for method in methods}
    cells_of = {
        (method, keep): [mean_increase(view, m, keep) for m in models]
        for method, view in views.items()
        for keep in keeps_descending(view)
        if keep != FULL
    }
    sized = all(experts_kept(views[method], m, keep) for method, keep in cells_of for m in models)
    header = ["method", "keep", *(["routed kept", "N (shared incl.)"] if sized else [])]
    header += [f"{m} mean increase" for m in models] + [f"{m} / {models[-1]}" for m in models[:-1]]
    rows = []
    for (method, keep), means in cells_of.items():
        cells = [method, keep]
        if sized:
            cells += [
                " / ".join(dict.fromkeys(experts_kept(views[method], m, keep)[i] for m in models)) for i in (0, 1)
            ]
        cells += [_signed(v) for v in means]
        for mean in means[:-1]:
            # A denominator that prints as 0.000 makes the ratio noise ("2.75" for -0.000 / -0.000).
            ratio = mean / means[-1] if abs(means[-1]) >= 0.0005 else math.nan
            cells.append("n/a" if math.isnan(ratio) else f"{ratio:.2f}")
        rows.append(cells)
    return markdown_table(header, rows)


def advantage_line(results: dict[str, Any]) -> str:
    """Whether the first model loses less than the last (EMO against the standard MoE) under every
    selection method, in one sentence naming the (method, keep) cells where it does not; empty
    with one model."""
    methods = methods_of(results)
    models = list(results["loss"][methods[0]])
    if len(models) < 2:
        return ""
    first, last = models[0], models[-1]
    num_cells, losing = 0, []
    for method in methods:
        view = for_method(results, method)
        for keep in keeps_descending(view):
            if keep == FULL:
                continue
            num_cells += 1
            if not mean_increase(view, first, keep) < mean_increase(view, last, keep):
                losing.append(f"{method} at {keep}")
    verdict = "under every method and keep fraction" if not losing else f"not with {', '.join(losing)}"
    return (
        f"{first}'s mean loss increase is below {last}'s in {num_cells - len(losing)} of {num_cells} "
        f"(method, keep) cells: {verdict}."
    )


def params_table(results: dict[str, Any]) -> str:
    """Total and active parameters of every subset, and the share of the full model it keeps."""
    rows = []
    for model, per_keep in results["params"].items():
        full_total = per_keep.get(FULL, {}).get("total")
        for keep in sorted(per_keep, key=float, reverse=True):
            counts = per_keep[keep]
            share = f"{counts['total'] / full_total:.1%}" if full_total else "n/a"
            rows.append([model, keep, f"{counts['total']:,}", f"{counts['active']:,}", share])
    return markdown_table(["model", "keep", "total params", "active params", "of full"], rows)


def equal_bytes_table(results: dict[str, Any]) -> str:
    """Per (method, keep, model): the mean loss increase of the subset keeping the same count in every
    layer and of the one of the same bytes with per-layer counts from one ranking, and those counts."""
    rows = []
    for method, per_model in results["equal_bytes"].items():
        for model, per_keep in per_model.items():
            for keep, cell in per_keep.items():
                uniform, ranked = _equal_bytes_increases(results, method, model, keep)
                counts = [statistics.fmean(len(k[i]) for k in cell["kept_experts"].values())
                          for i in range(len(next(iter(cell["kept_experts"].values()))))]
                rows.append([
                    method, keep, model, f"{cell['bytes'] / 1e6:.2f}", _signed(uniform), _signed(ranked),
                    _signed(ranked - uniform), " / ".join(f"{n:.1f}" for n in counts),
                ])
    header = ["method", "keep", "model", "MB", "same count per layer", "per-layer counts", "difference",
              "routed kept per layer (mean over domains)"]
    return markdown_table(header, rows)


def equal_bytes_line(results: dict[str, Any]) -> str:
    """In how many (model, keep) cells per-layer counts lose less than the same count in every layer."""
    cells = [
        (model, keep, *_equal_bytes_increases(results, method, model, keep))
        for method, per_model in results["equal_bytes"].items()
        for model, per_keep in per_model.items()
        for keep in per_keep
    ]
    worse = [f"{model} at {keep}" for model, keep, uniform, ranked in cells if not ranked < uniform]
    verdict = "in every cell" if not worse else f"not with {', '.join(worse)}"
    return (
        f"Per-layer counts lose less than the same count in every layer in {len(cells) - len(worse)} of "
        f"{len(cells)} (model, keep) cells: {verdict}."
    )


def _equal_bytes_increases(results: dict[str, Any], method: str, model: str, keep: str) -> tuple[float, float]:
    """Mean loss increase over the full model of the uniform subset at `keep` and of its equal-bytes twin."""
    view = for_method(results, method)
    ranked = results["equal_bytes"][method][model][keep]["loss"]
    ranked_view = {"loss": {model: {FULL: view["loss"][model][FULL], keep: ranked}}}
    return mean_increase(view, model, keep), mean_increase(ranked_view, model, keep)
