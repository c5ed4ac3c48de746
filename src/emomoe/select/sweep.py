"""The keep-fraction sweep: for every model, domain and fraction, select on the domain's training
documents, slice, and evaluate on its held-out documents.

Work is shared where the method allows: calibration and held-out windows are read once per domain
for all models, and scores that do not depend on the number kept (global, easy-ep, random) are
computed once per (model, domain) for all fractions. Fraction 1 is always included: it is the full
model, the baseline of every loss increase.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from emomoe.analyze.report import write_report
from emomoe.analyze.sweep_results import FULL
from emomoe.checkpoint import check_fits, load_config, load_for_inference
from emomoe.config import Config
from emomoe.data.loader import eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.errors import ConfigError
from emomoe.evaluate.loss import loss_by_domain
from emomoe.io import atomic_write_text
from emomoe.select.calibration import store_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.methods import ExpertSelector, SelectMethod
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import slice_model

RESULTS_FILE = "results.json"


@dataclasses.dataclass
class SweepConfig(Config):
    keep: list[float] = dataclasses.field(default_factory=lambda: [1.0, 0.5, 0.25, 0.125])
    """Fractions of each layer's routed experts to keep (shared experts always stay)."""
    method: SelectMethod = SelectMethod.LAYERWISE
    num_calib_windows: int = 64
    """Training windows per domain that the selection is computed on."""
    num_eval_windows: int = 64
    """Held-out windows per domain, evenly spaced; 0 means all of them."""
    seq_len: int = 256
    batch_size: int = 16
    seed: int = 0
    """Seed of the random method (the others are deterministic)."""
    domains: list[str] | None = None
    """Domains to sweep; None means every domain of the store."""

    def __post_init__(self) -> None:
        self.method = SelectMethod(self.method)

    def validate(self) -> None:
        if not self.keep:
            raise ConfigError("keep: expected at least one fraction")
        for fraction in self.keep:
            if not 0.0 < fraction <= 1.0:
                raise ConfigError(f"keep: fraction {fraction} is not in (0, 1]")
        for name in ("num_calib_windows", "seq_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.num_eval_windows < 0:
            raise ConfigError(f"num_eval_windows: expected >= 0, got {self.num_eval_windows}")


def keep_label(fraction: float) -> str:
    return f"{fraction:g}"


def run_sweep(
    checkpoints: dict[str, str | Path], store: str | Path | TokenStore, cfg: SweepConfig, progress: bool = True
) -> dict[str, Any]:
    """Losses of every (model, keep fraction, domain) and the sizes of the subsets (see
    `emomoe.analyze.sweep_results` for the layout)."""
    cfg.validate()
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    domains = cfg.domains or store.domains
    store.domain_ids(domains)
    for checkpoint in checkpoints.values():  # fail before any work, not after the first model
        check_fits(load_config(checkpoint), checkpoint, vocab_size=store.vocab_size, seq_len=cfg.seq_len)
    fractions = sorted({*cfg.keep, 1.0}, reverse=True)
    window_args = {"seq_len": cfg.seq_len, "batch_size": cfg.batch_size}
    calib = {
        d: store_calibration(store, [d], num_windows=cfg.num_calib_windows, **window_args).batches
        for d in (domains if cfg.method.needs_calibration else [])
    }
    max_eval = cfg.num_eval_windows or None
    held_out = {
        d: list(eval_batches(store, Split.VAL, domains=[d], max_windows_per_domain=max_eval, **window_args))
        for d in domains
    }
    results: dict[str, Any] = {"loss": {}, "params": {}, "kept_experts": {}}
    num_cells = len(checkpoints) * len(domains) * len(fractions)
    bar = tqdm(total=num_cells, desc="sweep", unit="subset", disable=not progress)
    for name, checkpoint in checkpoints.items():
        model, model_cfg = load_for_inference(checkpoint)
        layers = moe_layers(model, where=str(checkpoint))
        num_routed = [layer.num_routed for layer in layers]
        loss = results["loss"][name] = {keep_label(f): {} for f in fractions}
        params = results["params"][name] = {}
        kept_experts = results["kept_experts"][name] = {keep_label(f): {} for f in fractions if f < 1.0}
        for domain in domains:
            selector = ExpertSelector(model, layers, calib.get(domain, []), cfg.method, seed=cfg.seed)
            for fraction in fractions:
                label = keep_label(fraction)
                bar.set_postfix_str(f"{name} {domain} keep {label}")
                if label == FULL:
                    subset, subset_cfg = model, model_cfg
                else:
                    kept = selector.choose(KeepSpec.of_fraction(fraction).resolve(num_routed))
                    subset, subset_cfg = slice_model(model, model_cfg, layers, kept)
                    kept_experts[label][domain] = kept
                loss[label][domain] = loss_by_domain(subset.eval(), held_out[domain], store.domains)[domain].loss
                total, active = subset_cfg.num_params()
                params[label] = {"total": total, "active": active}
                bar.update()
    bar.close()
    results["settings"] = {
        **cfg.to_dict(), "domains": domains, "store": str(store.path),
        "checkpoints": {name: str(path) for name, path in checkpoints.items()},
    }
    return results


def write_sweep(out_dir: str | Path, results: dict[str, Any], **report_args: Any) -> Path:
    """results.json, report.md (tables) and the plot in `out_dir`; returns the report's path."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    return write_report(out_dir, results, **report_args)

