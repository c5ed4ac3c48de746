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

import torch
from tqdm.auto import tqdm

from emomoe.analyze.sweep_results import FULL, RESULTS_FILE
from emomoe.checkpoint import check_fits, load_config, load_for_inference
from emomoe.data.loader import eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.data.windows import HeldOutConfig
from emomoe.errors import ConfigError
from emomoe.experiments.sweep_report import write_report
from emomoe.io import atomic_write_text, refuse_existing
from emomoe.select.calibration import NUM_CALIB_WINDOWS, store_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.methods import ExpertSelector, SelectMethod
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import subset_config, subset_model
from emomoe.select.weight_source import ModelWeights
from emomoe.train.validation import loss_by_domain


@dataclasses.dataclass
class SweepConfig(HeldOutConfig):
    keep: str = "1.0,0.5,0.25,0.125"
    """Fractions of each layer's routed experts to keep (shared experts always stay), comma-separated
    and spelled as in select, with a decimal point: 1.0 is all of them, a bare 1 one expert."""
    method: SelectMethod = SelectMethod.LAYERWISE
    """How experts are ranked on the calibration windows."""
    num_calib_windows: int = NUM_CALIB_WINDOWS
    """Training windows per domain that the selection is computed on."""
    seed: int = 0
    """Seed of the random method (the others are deterministic)."""
    domains: list[str] | None = None
    """Domains to sweep; None means every domain of the store."""

    def __post_init__(self) -> None:
        self.method = SelectMethod(self.method)
        if isinstance(self.keep, (list, tuple)):  # from Python: a list of fractions
            self.keep = ",".join(str(float(k)) for k in self.keep)

    def validate(self) -> None:
        super().validate()
        if self.num_calib_windows < 1:
            raise ConfigError(f"num_calib_windows: expected a positive integer, got {self.num_calib_windows}")
        if any(KeepSpec.parse(k).fraction is None for k in self.keep.split(",")):
            raise ConfigError(
                f"--keep {self.keep}: sweep keeps fractions of the routed experts, spelled with a decimal point "
                "(1.0 for all of them, 0.25); a bare integer is a number of experts, as in select"
            )

    @property
    def fractions(self) -> list[float]:
        return [KeepSpec.parse(k).fraction for k in self.keep.split(",")]


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
    configs = {name: load_config(checkpoint) for name, checkpoint in checkpoints.items()}
    seq_len = cfg.seq_len or min(c.max_seq_len for c in configs.values())
    for name, checkpoint in checkpoints.items():  # fail before any work, not after the first model
        check_fits(
            configs[name], checkpoint, vocab_size=store.vocab_size, seq_len=seq_len,
            tokenizer_hash=store.tokenizer_hash, any_tokenizer=cfg.any_tokenizer,
        )
    fractions = sorted({*cfg.fractions, 1.0}, reverse=True)
    window_args = {"seq_len": seq_len, "batch_size": cfg.batch_size}
    calib = {
        d: store_calibration(store, [d], num_windows=cfg.num_calib_windows, **window_args)
        for d in (domains if cfg.method.needs_calibration else [])
    }
    for calibration in calib.values():
        calibration.check_size()
    held_out = {
        d: list(eval_batches(store, Split.VAL, domains=[d], max_windows_per_domain=cfg.max_eval_windows, **window_args))
        for d in domains
    }
    results: dict[str, Any] = {"loss": {}, "params": {}, "kept_experts": {}, "experts": {}}
    num_cells = len(checkpoints) * len(domains) * len(fractions)
    bar = tqdm(total=num_cells, desc="sweep", unit="subset", disable=not progress)
    for name, checkpoint in checkpoints.items():
        model, model_cfg = load_for_inference(checkpoint)
        source = ModelWeights(model, model_cfg)
        layers = moe_layers(model_cfg, where=str(checkpoint))
        num_routed = [layer.num_routed for layer in layers]
        results["experts"][name] = {"routed": num_routed, "shared": model_cfg.moe.router.num_shared_experts}
        loss = results["loss"][name] = {keep_label(f): {} for f in fractions}
        params = results["params"][name] = {}
        kept_experts = results["kept_experts"][name] = {keep_label(f): {} for f in fractions if f < 1.0}
        for domain in domains:
            selector = ExpertSelector(
                source, calib[domain].batches if domain in calib else [], cfg.method, seed=cfg.seed, where=str(checkpoint)
            )
            for fraction in fractions:
                label = keep_label(fraction)
                bar.set_postfix_str(f"{name} {domain} keep {label}")
                if label == FULL:
                    subset, subset_cfg = model, model_cfg
                else:
                    num_keep = KeepSpec.of_fraction(fraction).resolve(num_routed)
                    state: dict[str, torch.Tensor] = {}
                    kept_experts[label][domain] = selector.write_subset(num_keep, state.__setitem__)
                    subset_cfg = subset_config(model_cfg, layers, num_keep)
                    subset = subset_model(state, subset_cfg)
                loss[label][domain] = loss_by_domain(subset.eval(), held_out[domain], store.domains)[domain].loss
                total, active = subset_cfg.num_params()
                params[label] = {"total": total, "active": active}
                bar.update()
    bar.close()
    results["settings"] = {
        **cfg.to_dict(), "keep": cfg.fractions, "seq_len": seq_len, "domains": domains, "store": str(store.path),
        "checkpoints": {name: str(path) for name, path in checkpoints.items()},
    }
    return results


def write_sweep(out_dir: str | Path, results: dict[str, Any], *, force: bool = False, **report_args: Any) -> Path:
    """results.json, report.md (tables) and the plot in `out_dir` (replacing earlier results only with
    `force`); returns the report's path."""
    out_dir = Path(out_dir)
    refuse_existing(out_dir / RESULTS_FILE, force, " (results of an earlier sweep)")
    atomic_write_text(out_dir / RESULTS_FILE, json.dumps(results, indent=2) + "\n")
    return write_report(out_dir, results, **report_args)

