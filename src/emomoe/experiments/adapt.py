"""The adaptation question (`emomoe demo --adapt`): does an EMO subset learn a new domain from fewer
documents than a standard MoE's subset, or than either full model?

Steps, each cached in the output directory:
1. data:  an 8k byte-level BPE trained on the seen domains only, and the token store of the whole
          embedded corpus (the held-out domain is in it, to adapt to and evaluate on);
2. train: configs/demo-emo.yaml and configs/demo-std.yaml on the seen domains only (`data.domains`):
          no token of the held-out domain reaches pretraining;
3. adapt: for every k, the first k documents of a seeded order of the held-out domain's training
          split (so each smaller set lies inside the larger ones), written as a store of their own
          (OUT/docs/k<k>). For both models: select the subset (layerwise, on every window of the k
          documents), fine-tune it on the same k documents, and fine-tune the full model on them;
          every fine-tuning is the paper's recipe with the same number of optimizer steps;
4. eval:  loss on the held-out domain's validation documents (another split than the k come from)
          and on every seen domain's (forgetting), for the full models before fine-tuning (k = 0),
          the subsets before and after it, and the full models after it.

OUT/results.json holds every cell (a (model, variant, k)) with its losses and costs; it is rewritten
as each cell finishes and a rerun resumes with the first missing cell. OUT/report.md has the tables.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from emomoe.checkpoint import load_config, load_for_inference
from emomoe.config import Config, ranged
from emomoe.data.documents import document_tokens, write_documents_store
from emomoe.data.loader import eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.data.windows import WindowConfig
from emomoe.errors import ConfigError
from emomoe.experiments.adapt_report import write_adapt_report
from emomoe.experiments.demo import DEMO_MODELS, prepare_demo_data, train_demo_model, training_facts
from emomoe.experiments.finetune import (
    GLOBAL_BATCH_SIZE,
    FinetuneConfig,
    FinetuneRecipe,
    finetune_subset,
    recipe_config,
)
from emomoe.io import atomic_write_text, check_output_dir, read_json
from emomoe.select.calibration import store_calibration
from emomoe.select.subset import select_subset
from emomoe.train.config import SHIPPED_CONFIGS, RunConfig
from emomoe.train.rundir import CONFIG_FILE
from emomoe.train.validation import loss_by_domain

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
FULL, SUBSET = "full", "subset"


@dataclasses.dataclass
class AdaptConfig(Config):
    held_out: str = "german"
    """The domain left out of pretraining and adapted to."""
    num_docs: list[int] = ranged(default_factory=lambda: [8, 32, 128], ge=1)
    """The numbers k of held-out-domain documents that each subset is selected on and every model is fine-tuned on."""
    keep: float = ranged(0.25, gt=0, lt=1)
    """Fraction of each layer's routed experts the subsets keep."""
    num_steps: int = ranged(24, ge=1)
    """Optimizer steps of every fine-tuning, whatever k (each a global batch of 32 windows): the same
    tokens in every cell (24 steps: 0.85 epochs of the demo's 128 German documents, 19 of its 8)."""
    lr: float = ranged(5e-5, gt=0)
    """Peak learning rate of every fine-tuning (the paper's recipe: 5e-5)."""
    seed: int = ranged(0, ge=0)
    """Seeds the order the documents are drawn in and the fine-tuning's window order."""
    num_eval_windows: int = ranged(0, ge=0)
    """Held-out windows per domain that a loss is measured on, evenly spaced; 0 means all of them."""

    def validate(self) -> None:
        if not self.num_docs or len(set(self.num_docs)) != len(self.num_docs):
            raise ConfigError(f"num_docs: expected distinct document counts, at least one, got {self.num_docs}")


def cell_name(model: str, variant: str, k: int) -> str:
    return f"{model}/{variant}/k{k}"


def run_adapt(
    out: str | Path, cfg: AdaptConfig, overrides: list[str] | None = None, *, force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the study into `out` (see the module docstring); `overrides` (dotted key=value) apply to
    both models' pretraining configs. Returns the results (also OUT/results.json)."""
    cfg.check()
    out = Path(out)
    check_output_dir(out)
    for name in DEMO_MODELS:  # a bad override stops the study before the tokenizer is trained, not after
        RunConfig.from_yaml(SHIPPED_CONFIGS / DEMO_MODELS[name], overrides)
    say = print if progress else (lambda *_: None)
    say(f"[1/4] data: tokenizer without {cfg.held_out} and token store of the embedded corpus in {out}")
    store = prepare_demo_data(out, held_out=cfg.held_out, progress=progress)
    store.domain_ids([cfg.held_out])  # a DataError naming the store's domains
    seen = [d for d in store.domains if d != cfg.held_out]
    order = np.random.default_rng(cfg.seed).permutation(len(document_tokens(store, Split.TRAIN, cfg.held_out)))
    if max(cfg.num_docs) > len(order):
        raise ConfigError(f"num_docs: {max(cfg.num_docs)} documents asked for, {store.path} has {len(order)} "
                          f"training documents of {cfg.held_out!r}")
    final_dirs, training = {}, {}
    for name in DEMO_MODELS:
        say(f"[2/4] train: {DEMO_MODELS[name]} on {', '.join(seen)} -> {out / name}")
        started = time.perf_counter()
        pretrain = [*(overrides or []), f"data.domains=[{','.join(seen)}]"]
        final_dirs[name] = train_demo_model(name, store, out, pretrain, force=force, progress=progress).final_dir
        training[name] = training_facts(final_dirs[name], time.perf_counter() - started)
    trained = RunConfig.from_yaml(out / "emo" / CONFIG_FILE)
    windows = WindowConfig(seq_len=trained.data.seq_len, batch_size=trained.train.eval_batch_size)
    settings = {**cfg.to_dict(), "seen": seen, "seq_len": windows.seq_len, "recipe": FinetuneRecipe(lr=cfg.lr).to_dict(),
                "checkpoints": {name: str(path) for name, path in final_dirs.items()}}
    results = _resumed(out, settings, force=force)
    results["training"] = training
    measure = _HeldOut(store, cfg, windows)

    def finished(name: str, cell: dict[str, Any]) -> None:
        results["cells"][name] = cell
        atomic_write_text(out / RESULTS_FILE, json.dumps(results, indent=2) + "\n")

    say("[3/4] eval: the full models before fine-tuning (k = 0)")
    for name, final in final_dirs.items():
        if cell_name(name, FULL, 0) not in results["cells"]:
            finished(cell_name(name, FULL, 0), {"after": measure(final), "params": _params(final)})
    for k in sorted(cfg.num_docs):
        say(f"[4/4] adapt: k = {k} documents of {cfg.held_out}")
        docs = write_documents_store(store, Split.TRAIN, cfg.held_out, order[:k].tolist(), out / "docs" / f"k{k}",
                                     force=True)
        results["documents"][str(k)] = {"numbers": order[:k].tolist(), "num_tokens": docs.num_tokens(Split.TRAIN)}
        recipe = _recipe(cfg, docs, windows)
        for name, final in final_dirs.items():
            for variant in (SUBSET, FULL):
                if cell_name(name, variant, k) not in results["cells"]:
                    say(f"      {name} {variant}")
                    dirs = (out / "subsets" / f"{name}-k{k}", out / "finetuned" / f"{name}-{variant}-k{k}")
                    cell = _adapted(final, variant == SUBSET, docs, dirs, recipe, measure, cfg.keep)
                    finished(cell_name(name, variant, k), cell)
    write_adapt_report(out / REPORT_FILE, results, command=f"emomoe demo --adapt --out {out}")
    return results


class _HeldOut:
    """Loss of a checkpoint on the validation windows of every domain: the held-out domain's, the mean
    over the seen ones, and each domain's (the windows are read once)."""

    def __init__(self, store: TokenStore, cfg: AdaptConfig, windows: WindowConfig) -> None:
        self.store, self.held_out = store, cfg.held_out
        self.seen = [d for d in store.domains if d != cfg.held_out]
        self.batches = list(eval_batches(store, Split.VAL, seq_len=windows.seq_len, batch_size=windows.batch_size,
                                         max_windows_per_domain=cfg.num_eval_windows or None))

    def __call__(self, checkpoint: Path) -> dict[str, Any]:
        model, _ = load_for_inference(checkpoint)
        losses = {d: v.loss for d, v in loss_by_domain(model, self.batches, self.store.domains).items()}
        seen = statistics.fmean(losses[d] for d in self.seen)
        return {"held_out": losses[self.held_out], "seen": seen, "domains": losses}


def _recipe(cfg: AdaptConfig, docs: TokenStore, windows: WindowConfig) -> FinetuneConfig:
    """The paper's recipe on `docs` for exactly `cfg.num_steps` steps: as many epochs over the loader's
    (whole) windows as make that many global batches (whole forwards of batch_size windows)."""
    per_step = math.ceil(GLOBAL_BATCH_SIZE / windows.batch_size) * windows.batch_size
    num_windows = max((docs.num_tokens(Split.TRAIN) - 1) // windows.seq_len, 1)
    epochs = cfg.num_steps * per_step / num_windows
    recipe = FinetuneRecipe(lr=cfg.lr, max_steps=cfg.num_steps, num_epochs=epochs, seed=cfg.seed)
    return recipe_config(recipe, domains=[cfg.held_out], seq_len=windows.seq_len, batch_size=windows.batch_size)


def _adapted(
    final: Path, subset: bool, docs: TokenStore, dirs: tuple[Path, Path], recipe: FinetuneConfig, measure: _HeldOut,
    keep: float,
) -> dict[str, Any]:
    """One cell: the full model `final`, or (`subset`) its `keep` subset selected on every token of
    `docs` into dirs[0], fine-tuned on `docs` into dirs[1]; its losses and costs."""
    cell: dict[str, Any] = {}
    source, tuned = final, dirs[1]
    num_tokens = docs.num_tokens(Split.TRAIN)
    if subset:
        started = time.perf_counter()
        # Every window of the documents, the last one padded: all of their tokens.
        calibration = store_calibration(docs, recipe.domains, num_windows=math.ceil(num_tokens / recipe.seq_len),
                                        seq_len=recipe.seq_len, batch_size=recipe.batch_size)
        source = dirs[0]
        select_subset(final, source, calibration=calibration, keep=str(keep), force=True)
        cell["selection"] = {"seconds": round(time.perf_counter() - started, 1), "tokens": calibration.info["num_tokens"]}
        cell["before"] = measure(source)
    started = time.perf_counter()
    done = finetune_subset(source, docs, tuned, recipe, force=True)
    cell["finetune"] = {"seconds": round(time.perf_counter() - started, 1), "steps": done["num_steps"],
                        "tokens": done["num_tokens"], "epochs": round(done["num_tokens"] / num_tokens, 2)}
    cell["after"], cell["params"] = measure(tuned), _params(tuned)
    return cell


def _params(checkpoint: Path) -> int:
    """Parameters of a checkpoint (all of them are trained by fine-tuning)."""
    return load_config(checkpoint).num_params()[0]


def _resumed(out: Path, settings: dict[str, Any], *, force: bool) -> dict[str, Any]:
    """The finished cells of an earlier run with the same settings (none with `force`)."""
    path = out / RESULTS_FILE
    fresh = {"settings": settings, "documents": {}, "cells": {}}
    if force or not path.is_file():
        return fresh
    earlier = read_json(path)
    if earlier.get("settings") != settings:
        changed = sorted(k for k in settings if earlier.get("settings", {}).get(k) != settings[k])
        raise ConfigError(f"{path}: results of another setting ({', '.join(changed)}); pass --force to start over")
    return earlier

