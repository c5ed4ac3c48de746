"""The keep-fraction sweep: for every model, domain, selection method and fraction, select on the
domain's training documents, slice, and evaluate on its held-out documents; and how often
`--selection auto` picks a held-out document's own domain from its first tokens; and, at the fractions
asked for, whether the bytes of a subset serve better spread evenly (the same count in every layer) or
as one ranking of every layer's experts spreads them (`select --budget-gb`).

Work is shared where the method allows: calibration and held-out windows are read once per domain
for all models, the full model is evaluated once per (model, domain) for all methods, and scores
that do not depend on the number kept (global, easy-ep, reap, random) are computed once per
(model, domain) for all fractions; global, easy-ep and reap from one pass of the unpruned model. Fraction 1 is always included: it is the full model, the
baseline of every loss increase. Every domain's calibration profile (the full model's router mass
on its calibration windows) is computed once per model, from whichever method's pass gives it for
free, and written with the subsets' selection files (`selections/MODEL/METHOD/KEEP/DOMAIN.json`),
which `--selection` and `--selection auto` read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from emomoe.analyze.collect import held_out_documents
from emomoe.analyze.sweep_results import FULL, RESULTS_FILE
from emomoe.checkpoint import CheckpointReader, check_fits, load_config, load_for_inference
from emomoe.config import ranged
from emomoe.data.loader import Batch, eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.data.windows import HeldOutConfig
from emomoe.errors import ConfigError
from emomoe.experiments.auto_selection import auto_selection_accuracy
from emomoe.experiments.sweep_report import write_report
from emomoe.io import atomic_path, atomic_write_text, refuse_existing
from emomoe.model import ModelConfig
from emomoe.select.budget import Budget, BudgetUnit, SubsetSize, check_budget, fit_counts
from emomoe.select.calibration import NUM_CALIB_WINDOWS, store_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.methods import ExpertSelector, SelectMethod, score_together
from emomoe.select.routing import MoELayer, moe_layers
from emomoe.select.slicing import subset_config, subset_model
from emomoe.select.subset import selection_record, subset_size
from emomoe.select.weight_source import ModelWeights, WeightSource
from emomoe.train.validation import loss_by_domain

SELECTIONS_DIR = "selections"
AUTO_EVAL_DOCS = 64
"""Held-out documents per domain that the auto choice is scored on (all of the demo corpus's)."""


@dataclasses.dataclass
class SweepConfig(HeldOutConfig):
    keep: str = "1.0,0.5,0.25,0.125"
    """Fractions of each layer's routed experts to keep (shared experts always stay), comma-separated
    and spelled as in select, with a decimal point: 1.0 is all of them, a bare 1 one expert."""
    methods: list[SelectMethod] = dataclasses.field(default_factory=lambda: [SelectMethod.LAYERWISE])
    """How experts are ranked on the calibration windows; several run side by side (layerwise,
    global, easy-ep, reap, random)."""
    compare_keep: str | None = None
    """Keep fractions at which the methods after the first are swept (spelled as keep); None: all
    of keep. The first method is swept at every fraction."""
    equal_bytes: str | None = None
    """Keep fractions (spelled as keep) at which the first method's subset, the same count in every layer,
    is compared with one of the same bytes whose per-layer counts come from one ranking of every layer's
    experts, as `select --budget-gb` makes them; None: no comparison."""
    num_calib_windows: int = ranged(NUM_CALIB_WINDOWS, ge=1)
    """Training windows per domain that the selection is computed on."""
    seed: int = 0
    """Seed of the random method (the others are deterministic)."""
    domains: list[str] | None = None
    """Domains to sweep; None means every domain of the store."""
    auto_eval_tokens: list[int] = ranged(default_factory=lambda: [16, 32, 64], ge=1)
    """The prompt lengths (`--auto-tokens` of generate, eval, lm-eval) at which `--selection auto` is
    scored: how often the first tokens of a held-out document choose its own domain's calibration
    profile (with two domains or more); empty skips it."""
    auto_eval_docs: int = ranged(AUTO_EVAL_DOCS, ge=1)
    """Held-out documents per domain that the auto choice is scored on."""

    def __post_init__(self) -> None:
        self.methods = [SelectMethod(m) for m in self.methods]
        if isinstance(self.keep, (list, tuple)):  # from Python: a list of fractions
            self.keep = ",".join(str(float(k)) for k in self.keep)
        if isinstance(self.compare_keep, (list, tuple)):
            self.compare_keep = ",".join(str(float(k)) for k in self.compare_keep)
        if isinstance(self.equal_bytes, (list, tuple)):
            self.equal_bytes = ",".join(str(float(k)) for k in self.equal_bytes)

    def validate(self) -> None:
        super().validate()
        spellings = (("keep", self.keep), ("compare-keep", self.compare_keep), ("equal-bytes", self.equal_bytes))
        for name, spelled in spellings:
            if spelled is not None and any(KeepSpec.parse(k).fraction is None for k in spelled.split(",")):
                raise ConfigError(
                    f"--{name} {spelled}: sweep keeps fractions of the routed experts, spelled with a decimal "
                    "point (1.0 for all of them, 0.25); a bare integer is a number of experts, as in select"
                )
        missing = set(self.equal_bytes_fractions) - set(self.subset_fractions(self.methods[0]) if self.methods else [])
        if missing:
            raise ConfigError(
                f"--equal-bytes {self.equal_bytes}: {', '.join(f'{f:g}' for f in sorted(missing))} not among --keep, "
                "the uniform subsets the per-layer counts are compared with"
            )
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods: expected distinct selection methods, got {[str(m) for m in self.methods]}")

    @property
    def fractions(self) -> list[float]:
        return [KeepSpec.parse(k).fraction for k in self.keep.split(",")]

    def subset_fractions(self, method: SelectMethod) -> list[float]:
        """The fractions below 1 that `method` is swept at, largest first."""
        spelled = self.keep if method is self.methods[0] or self.compare_keep is None else self.compare_keep
        return sorted({KeepSpec.parse(k).fraction for k in spelled.split(",")} - {1.0}, reverse=True)

    @property
    def equal_bytes_fractions(self) -> list[float]:
        """The fractions below 1 at which per-layer counts meet the same count in every layer, largest first."""
        spelled = self.equal_bytes or ""
        return sorted({KeepSpec.parse(k).fraction for k in spelled.split(",") if k} - {1.0}, reverse=True)

    @property
    def needs_calibration(self) -> bool:
        """Some method ranks on calibration windows, or the auto choice needs the profiles."""
        return bool(self.auto_eval_tokens) or any(m.needs_calibration for m in self.methods)


def keep_label(fraction: float) -> str:
    return f"{fraction:g}"


def run_sweep(
    checkpoints: dict[str, str | Path], store: str | Path | TokenStore, cfg: SweepConfig, progress: bool = True
) -> dict[str, Any]:
    """Losses of every (method, model, keep fraction, domain), the sizes of the subsets, the
    calibration profiles and the auto choice's accuracy (see `emomoe.analyze.sweep_results`)."""
    cfg.check()
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    domains = cfg.domains or store.domains
    store.domain_ids(domains)
    configs = {name: load_config(checkpoint) for name, checkpoint in checkpoints.items()}
    seq_len = cfg.seq_len or min(c.max_seq_len for c in configs.values())
    for name, checkpoint in checkpoints.items():  # fail before any work, not after the first model
        check_fits(
            configs[name], checkpoint, vocab_size=store.vocab_size, seq_len=seq_len,
            tokenizer_hash=store.tokenizer_hash, any_tokenizer=cfg.any_tokenizer,
        )
    equal_bytes_of = {name: _equal_bytes(path, cfg.equal_bytes_fractions) for name, path in checkpoints.items()}
    window_args = {"seq_len": seq_len, "batch_size": cfg.batch_size}
    calib = {
        d: store_calibration(store, [d], num_windows=cfg.num_calib_windows, **window_args)
        for d in (domains if cfg.needs_calibration else [])
    }
    for calibration in calib.values():
        calibration.check_size()
    held_out = {
        d: list(eval_batches(store, Split.VAL, domains=[d], max_windows_per_domain=cfg.max_eval_windows, **window_args))
        for d in domains
    }
    docs = None
    if cfg.auto_eval_tokens and len(domains) > 1:
        longest = max(cfg.auto_eval_tokens)
        docs = held_out_documents(store, domains, num_docs=cfg.auto_eval_docs, tokens_per_doc=longest)
    methods = [str(m) for m in cfg.methods]
    results: dict[str, Any] = {
        "loss": {m: {} for m in methods}, "kept_experts": {m: {} for m in methods}, "params": {}, "experts": {},
        "profiles": {}, "calibration": {d: c.info for d, c in calib.items()}, "auto_selection": {},
        "equal_bytes": {methods[0]: {}} if cfg.equal_bytes_fractions else {},
    }
    num_subsets = sum(len(cfg.subset_fractions(m)) for m in cfg.methods) + len(cfg.equal_bytes_fractions)
    num_cells = len(checkpoints) * len(domains) * (1 + num_subsets)
    bar = tqdm(total=num_cells, desc="sweep", unit="subset", disable=not progress)
    for name, checkpoint in checkpoints.items():
        model, model_cfg = load_for_inference(checkpoint)
        source = ModelWeights(model, model_cfg)
        layers = moe_layers(model_cfg, where=str(checkpoint))
        num_routed = [layer.num_routed for layer in layers]
        results["experts"][name] = {"routed": num_routed, "shared": model_cfg.moe.router.num_shared_experts}
        params = results["params"][name] = {FULL: _params(model_cfg)}
        for method in cfg.methods:
            subsets = cfg.subset_fractions(method)
            results["loss"][str(method)][name] = {keep_label(f): {} for f in [1.0, *subsets]}
            results["kept_experts"][str(method)][name] = {keep_label(f): {} for f in subsets}
        profiles = results["profiles"][name] = {}
        equal_bytes = equal_bytes_of[name]
        if equal_bytes:
            results["equal_bytes"][methods[0]][name] = {
                keep_label(f): {"bytes": budget.budget.limit, "loss": {}, "kept_experts": {}}
                for f, budget in equal_bytes.items()
            }
        for domain in domains:
            bar.set_postfix_str(f"{name} {domain} full")
            full_loss = loss_by_domain(model, held_out[domain], store.domains)[domain].loss
            bar.update()
            batches = calib[domain].batches if domain in calib else []
            selectors = {
                m: ExpertSelector(source, batches if m.needs_calibration else [], m, seed=cfg.seed, where=name)
                for m in cfg.methods
            }
            if batches:
                score_together(list(selectors.values()))
                profile = _profiler(selectors, source, batches).profile()
                profiles[domain] = [mass_E.tolist() for mass_E in profile]
                for selector in selectors.values():
                    if selector.method is SelectMethod.LAYERWISE:  # its budget ranking needs the profile
                        selector.use_profile(profile)
            for method, selector in selectors.items():
                loss = results["loss"][str(method)][name]
                loss[FULL][domain] = full_loss
                for fraction in cfg.subset_fractions(method):
                    label = keep_label(fraction)
                    bar.set_postfix_str(f"{name} {domain} {method} keep {label}")
                    num_keep = KeepSpec.of_fraction(fraction).resolve(num_routed)
                    windows = held_out[domain]
                    kept, loss[label][domain] = _subset_loss(selector, layers, num_keep, windows, store, domain)
                    results["kept_experts"][str(method)][name][label][domain] = kept
                    params[label] = _params(subset_config(model_cfg, layers, num_keep))
                    bar.update()
            first = selectors[cfg.methods[0]]
            for fraction, budget in equal_bytes.items():
                label = keep_label(fraction)
                bar.set_postfix_str(f"{name} {domain} {first.method} per-layer counts at the bytes of keep {label}")
                num_keep = budget.counts(first.budget_shares())
                cell = results["equal_bytes"][methods[0]][name][label]
                kept, cell["loss"][domain] = _subset_loss(first, layers, num_keep, held_out[domain], store, domain)
                cell["kept_experts"][domain] = kept
                bar.update()
        if docs is not None:
            bar.set_postfix_str(f"{name} auto selection")
            as_tensors = {d: [torch.tensor(p) for p in profile] for d, profile in profiles.items()}
            results["auto_selection"][name] = auto_selection_accuracy(
                model, as_tensors, docs, cfg.auto_eval_tokens, cfg.batch_size
            )
    bar.close()
    results["settings"] = {
        **cfg.to_dict(), "keep": cfg.fractions, "seq_len": seq_len, "domains": domains, "store": str(store.path),
        "checkpoints": {name: str(path) for name, path in checkpoints.items()},
    }
    return results


def _subset_loss(
    selector: ExpertSelector, layers: list[MoELayer], num_keep: list[int], held_out: list[Batch], store: TokenStore,
    domain: str,
) -> tuple[list[list[int]], float]:
    """The experts `selector` keeps at `num_keep` per layer, and the held-out loss of that subset on `domain`."""
    state: dict[str, torch.Tensor] = {}
    kept = selector.write_subset(num_keep, state.__setitem__)
    subset = subset_model(state, subset_config(selector.source.config, layers, num_keep))
    return kept, loss_by_domain(subset, held_out, store.domains)[domain].loss


@dataclasses.dataclass
class _EqualBytes:
    """Per-layer counts at the bytes of a checkpoint's subset keeping the same fraction in every layer."""

    budget: Budget
    floor: list[int]
    size: SubsetSize

    def counts(self, shares: list[torch.Tensor]) -> list[int]:
        return fit_counts(shares, self.floor, self.size, self.budget)


def _equal_bytes(checkpoint: str | Path, fractions: list[float]) -> dict[float, _EqualBytes]:
    """The budgets of the equal-bytes comparison at `fractions`, each checked to hold every layer's top-k."""
    if not fractions:
        return {}
    with CheckpointReader(checkpoint) as reader:  # the sizes need the names, shapes and dtypes only
        layers = moe_layers(reader.config, where=str(checkpoint))
        floor = [reader.config.moe.top_k_in_layer(layer.index) for layer in layers]
        size = subset_size(reader, layers, BudgetUnit.BYTES)
        num_routed = [layer.num_routed for layer in layers]
    budgets = {}
    for fraction in fractions:
        limit = size(KeepSpec.of_fraction(fraction).resolve(num_routed))
        budgets[fraction] = _EqualBytes(Budget(limit, BudgetUnit.BYTES, f"equal_bytes {fraction:g}"), floor, size)
        check_budget(floor, size, budgets[fraction].budget)
    return budgets


def _params(cfg: ModelConfig) -> dict[str, int]:
    total, active = cfg.num_params()
    return {"total": total, "active": active}


def _profiler(
    selectors: dict[SelectMethod, ExpertSelector], source: WeightSource, batches: list[Batch]
) -> ExpertSelector:
    """A selector whose calibration profile costs nothing more (global, easy-ep or reap, whose pass
    measured it), else layerwise (one more pass), else a global one of its own (random only)."""
    for method in (SelectMethod.GLOBAL, SelectMethod.REAP, SelectMethod.EASY_EP, SelectMethod.LAYERWISE):
        if method in selectors:
            return selectors[method]
    return ExpertSelector(source, batches, SelectMethod.GLOBAL)


def write_sweep(out_dir: str | Path, results: dict[str, Any], *, force: bool = False, **report_args: Any) -> Path:
    """results.json, the subsets' selection files, report.md (tables) and the plot in `out_dir`
    (replacing earlier results only with `force`); returns the report's path."""
    out_dir = Path(out_dir)
    refuse_existing(out_dir / RESULTS_FILE, force, " (results of an earlier sweep)")
    atomic_write_text(out_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    write_selections(out_dir / SELECTIONS_DIR, results)
    return write_report(out_dir, results, **report_args)


def write_selections(directory: Path, results: dict[str, Any]) -> None:
    """Every subset of the sweep as a selection of its checkpoint, with its domain's calibration
    profile, in `directory`/MODEL/METHOD/KEEP/DOMAIN.json (replaced as a whole): what `--selection`
    and `--selection auto` read, without slicing anything."""
    settings = results["settings"]
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        for model, checkpoint in settings["checkpoints"].items():
            with CheckpointReader(checkpoint) as reader:
                layers = moe_layers(reader.config, where=checkpoint)
                for method, keep, domain, kept in _subsets(results, model):
                    how = {
                        "method": method, "keep": keep, "seed": settings["seed"],
                        "calibration": results["calibration"].get(domain),
                        "router_profile": results["profiles"][model].get(domain),
                    }
                    sub_cfg = subset_config(reader.config, layers, [len(k) for k in kept])
                    path = tmp / model / method / keep / f"{domain}.json"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(selection_record(reader, sub_cfg, layers, kept, **how), indent=2) + "\n")


def _subsets(results: dict[str, Any], model: str) -> Iterator[tuple[str, str, str, list[list[int]]]]:
    """(method, keep, domain, kept experts) of every subset of `model` in the results."""
    for method, per_model in results["kept_experts"].items():
        for keep, per_domain in per_model[model].items():
            for domain, kept in per_domain.items():
                yield method, keep, domain, kept

