"""Subset overlap: how much the kept-expert sets of different domains' subsets share (Jaccard).

The sets come from a sweep directory: its `results.json` (`kept_experts` of its first selection
method: model -> keep -> domain -> kept routed experts per MoE layer, see
`emomoe.analyze.sweep_results`) and any `selection.json` of a subset saved below it (`emomoe
select`), whose domain is its calibration domains. Modular models
keep different experts for different domains: their overlap stays near what two random subsets
of the same size would share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emomoe.analyze.metrics import expected_random_jaccard, jaccard_matrix, mean_off_diagonal
from emomoe.analyze.sweep_results import RESULTS_FILE, for_method, methods_of
from emomoe.checkpoint.selection import SELECTION_FILE, read_selection
from emomoe.errors import DataError, warn
from emomoe.io import parse_errors, read_json

KeptSets = dict[str, dict[str, dict[str, list[list[int]]]]]
"""model -> keep label -> domain -> kept routed experts of every MoE layer."""


def read_kept_sets(
    sweep_dir: str | Path, checkpoints: dict[str, str | Path], store: str | Path | None = None
) -> KeptSets:
    """Every kept-expert set recorded under `sweep_dir` for the analysed `checkpoints` (name ->
    directory): a sweep's, when it swept these checkpoints (on `store`, if given: the sweep of
    other data is refused), and those of subsets selected from them (by their source's path).
    What belongs to other models is left out, with a warning: one table never mixes models."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise DataError(f"{sweep_dir}: sweep directory not found")
    by_path = {_resolved(c): name for name, c in checkpoints.items()}
    kept: KeptSets = {}
    others: set[str] = set()
    results = sweep_dir / RESULTS_FILE
    if results.is_file():
        sweep = read_json(results)
        with parse_errors(results, "sweep result"):
            settings = sweep.get("settings") or {}
            swept_store = settings.get("store")
            if store is not None and swept_store and _resolved(swept_store) != _resolved(store):
                raise DataError(f"{results}: the sweep ran on {swept_store}, not on {store}; its subsets were selected "
                                "on other data")
            swept = settings.get("checkpoints") or {}
            recorded = for_method(sweep, methods_of(sweep)[0])["kept_experts"]
            for model, per_keep in recorded.items():
                # A sweep that records its checkpoints is matched by them; an older one by the model's name.
                name = by_path.get(_resolved(swept[model])) if model in swept else model
                if name is None:
                    others.add(f"{model} ({swept[model]})")
                    continue
                for keep, per_domain in per_keep.items():
                    kept.setdefault(name, {}).setdefault(keep, {}).update(per_domain)
    for path in sorted(sweep_dir.rglob(SELECTION_FILE)):
        record = read_selection(path.parent)
        source = str(record.get("source_checkpoint", ""))
        model = by_path.get(_resolved(source)) if source else None
        if model is None:
            others.add(f"{path.parent} (selected from {source or 'an unnamed checkpoint'})")
            continue
        calibration = record.get("calibration") or {}
        domain = ",".join(calibration.get("domains") or [path.parent.name])
        kept.setdefault(model, {}).setdefault(str(record.get("keep", "?")), {})[domain] = record["kept_experts"]
    if others:
        warn(f"{sweep_dir}: left out of the overlap, as of models not analysed here: {', '.join(sorted(others))}")
    if not kept:
        raise DataError(
            f"{sweep_dir}: no kept experts of the analysed models found (expected a sweep's {RESULTS_FILE} or "
            f"subsets' {SELECTION_FILE})"
        )
    return kept


def _resolved(path: str | Path) -> str:
    return str(Path(path).resolve())


def overlap_summary(kept: KeptSets, num_experts: dict[str, list[int]]) -> dict[str, Any]:
    """Per model and keep: the Jaccard matrix between domains for every MoE layer, its mean off
    the diagonal, and (when the model's expert counts are known) the random-subset baseline."""
    out: dict[str, Any] = {}
    for model, per_keep in kept.items():
        for keep, per_domain in per_keep.items():
            domains = list(per_domain)
            num_layers = min(len(v) for v in per_domain.values())
            matrices = [jaccard_matrix([per_domain[d][i] for d in domains]) for i in range(num_layers)]
            sizes = [len(per_domain[domains[0]][i]) for i in range(num_layers)]
            counts = num_experts.get(model)
            out.setdefault(model, {})[keep] = {
                "domains": domains,
                "num_kept": sizes,
                "jaccard": [m.tolist() for m in matrices],
                "mean_off_diagonal": [mean_off_diagonal(m) for m in matrices],
                "random_baseline": (
                    [expected_random_jaccard(n, e) for n, e in zip(sizes, counts)]
                    if counts and len(counts) == num_layers else None
                ),
            }
    return out
