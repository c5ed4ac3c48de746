"""Markdown tables of a sweep: per-domain losses, mean increases, and subset sizes."""

from __future__ import annotations

import math
from typing import Any

from emomoe.analyze.sweep_results import FULL, domains_of, experts_kept, increase, keeps_descending, mean_increase
from emomoe.tables import markdown_table


def _signed(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.3f}"


def subset_loss_table(results: dict[str, Any]) -> str:
    """One row per (model, keep): the loss on every domain with its increase over the full model."""
    domains = domains_of(results)
    rows = []
    for model, per_keep in results["loss"].items():
        for keep in keeps_descending(results):
            if keep not in per_keep:
                continue
            cells = [model, keep]
            for domain in domains:
                loss = per_keep[keep].get(domain, math.nan)
                delta = "" if keep == FULL else f" ({_signed(increase(results, model, keep, domain))})"
                cells.append(f"{loss:.3f}{delta}")
            cells.append("0" if keep == FULL else _signed(mean_increase(results, model, keep)))
            rows.append(cells)
    return markdown_table(["model", "keep", *domains, "mean increase"], rows)


def summary_table(results: dict[str, Any]) -> str:
    """Mean loss increase per keep fraction, one column per model, and the ratio of every other
    model's increase to the last model's (the standard MoE, when it comes last).

    When the results record the subsets' sizes, each fraction is also spelled as routed experts
    kept per layer and as the paper's N, which counts the shared experts (N of 128 there).
    """
    models = list(results["loss"])
    keeps = [k for k in keeps_descending(results) if k != FULL]
    sized = all(experts_kept(results, m, k) for m in models for k in keeps)
    header = ["keep", *(["routed kept", "N (shared incl.)"] if sized else [])]
    header += [f"{m} mean increase" for m in models] + [f"{m} / {models[-1]}" for m in models[:-1]]
    rows = []
    for keep in keeps:
        means = [mean_increase(results, m, keep) for m in models]
        cells = [keep]
        if sized:
            cells += [" / ".join(dict.fromkeys(experts_kept(results, m, keep)[i] for m in models)) for i in (0, 1)]
        cells += [_signed(v) for v in means]
        for mean in means[:-1]:
            # A denominator that prints as 0.000 makes the ratio noise ("2.75" for -0.000 / -0.000).
            ratio = mean / means[-1] if abs(means[-1]) >= 0.0005 else math.nan
            cells.append("n/a" if math.isnan(ratio) else f"{ratio:.2f}")
        rows.append(cells)
    return markdown_table(header, rows)


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
