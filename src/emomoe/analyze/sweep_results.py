"""Reading a sweep's results: loss increases over the full model, per domain and averaged.

A sweep result is the dict `emomoe.experiments.sweep.run_sweep` returns and writes as RESULTS_FILE:

    {"loss":   {method: {model: {keep: {domain: loss}}}},
     "kept_experts": {method: {model: {keep: {domain: [[routed ids kept] per MoE layer]}}}},
     "params": {model: {keep: {"total": int, "active": int}}},
     "experts": {model: {"routed": [routed experts per MoE layer], "shared": int}},
     "profiles": {model: {domain: [[router mass of every routed expert] per MoE layer]}},
     "calibration": {domain: {what the calibration windows were}},
     "auto_selection": {model: {prompt tokens: {"accuracy": float, "per_domain": {domain: float},
                                                "confusion": {domain: {chosen domain: count}}}}},
     "equal_bytes": {method: {model: {keep: {"bytes": int, "loss": {domain: loss},
                                             "kept_experts": {domain: [[routed ids kept] per MoE layer]}}}}},
     "settings": {...}}

`method` is a selection method (layerwise, global, easy-ep, reap, random); `keep` is a fraction of
each layer's routed experts spelled with `:g` ("1", "0.5", "0.25"); "1" is the full model, the
baseline every increase is measured against (the same under every method). The functions below
read one method's results, in the layout `for_method` gives (`loss` and `kept_experts` without the
method level). `equal_bytes` (only with `sweep --equal-bytes`) holds subsets of the first method
whose per-layer counts come from one ranking of every layer's experts, each as many bytes (`bytes`,
as written) as the subset keeping the fraction `keep` in every layer, whose loss is in `loss`.
"""

from __future__ import annotations

import math
from typing import Any

RESULTS_FILE = "results.json"
FULL = "1"


def methods_of(results: dict[str, Any]) -> list[str]:
    return list(results["loss"])


def for_method(results: dict[str, Any], method: str) -> dict[str, Any]:
    """The results of one selection method: `loss` and `kept_experts` are model -> keep -> domain."""
    return {**results, "loss": results["loss"][method], "kept_experts": results.get("kept_experts", {}).get(method, {})}


def keeps_descending(results: dict[str, Any]) -> list[str]:
    """Every keep label that occurs in the results, largest fraction first."""
    labels = {keep for per_keep in results["loss"].values() for keep in per_keep}
    return sorted(labels, key=float, reverse=True)


def domains_of(results: dict[str, Any]) -> list[str]:
    seen: dict[str, None] = {}
    for per_keep in results["loss"].values():
        for per_domain in per_keep.values():
            seen.update(dict.fromkeys(per_domain))
    return list(seen)


def increase(results: dict[str, Any], model: str, keep: str, domain: str) -> float:
    """Loss at `keep` minus the full model's loss on `domain` (nan if either is missing)."""
    per_keep = results["loss"][model]
    try:
        return per_keep[keep][domain] - per_keep[FULL][domain]
    except KeyError:
        return math.nan


def mean_increase(results: dict[str, Any], model: str, keep: str) -> float:
    """Unweighted mean over domains of the loss increase: every domain counts the same."""
    values = [increase(results, model, keep, d) for d in domains_of(results)]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def experts_kept(results: dict[str, Any], model: str, keep: str) -> tuple[str, str] | None:
    """("8 of 31", "9 of 32"): routed experts kept per layer, and the paper's N, which counts the
    shared experts too; a range like "4-8" when layers differ. None if the results do not say."""
    sizes = results.get("experts", {}).get(model)
    kept = next(iter(results.get("kept_experts", {}).get(model, {}).get(keep, {}).values()), None)
    if sizes is None or kept is None:
        return None
    shared = sizes["shared"]

    def span(counts: list[int]) -> str:
        return f"{min(counts)}" if min(counts) == max(counts) else f"{min(counts)}-{max(counts)}"

    routed_kept = [len(layer) for layer in kept]
    return (
        f"{span(routed_kept)} of {span(sizes['routed'])}",
        f"{span([n + shared for n in routed_kept])} of {span([n + shared for n in sizes['routed']])}",
    )
