"""The paper's task protocol in one run (the official `scripts/selective_hf` pipeline): for every
task, model, selection method, keep and calibration size, select experts on the task's examples,
evaluate the subset on the task's held-out split, and optionally fine-tune it for an epoch on the
task's training examples with the paper's recipe and evaluate it again.

- Calibration: `num_calib` examples (0: all) of the task's pool, each its prompt (few-shot
  demonstrations included) and its gold answer, one padded row per example
  (`emomoe.experiments.task_data`); a smaller draw is the start of a larger one.
- Before fine-tuning, a subset is evaluated as a routing mask on the full model (the sliced
  subset's logits, `model.selection`), so nothing is written but its selection file
  (`selections/TASK/MODEL/METHOD/KEEP/n5.json`; `all.json`, `random.json`). Fine-tuning slices it out, trains it
  (`experiments.finetune`, on every fine-tuning example of the task) and evaluates it; the trained
  copy is then deleted.
- The whole models: every `checkpoints` model unselected, and the `references`, models evaluated
  as they are (and fine-tuned as a whole): the memory-matched baselines, e.g. a standard MoE
  trained at a subset's size, or a dense model.

Every finished cell is written to results.json at once, so a second run with the same out
directory reuses what is done (cells of new tasks, keeps, methods or sizes are added, and
`--finetune` adds the "after" of the cells that lack it); settings that would change a finished
cell must then stay as they were. Ctrl-C and SIGTERM stop a run within the cell in progress,
which is dropped; the finished ones stay in results.json and report.md.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from emomoe.checkpoint import CheckpointReader, load_config, load_for_inference
from emomoe.config import ranged
from emomoe.data.tasks import TaskDataConfig
from emomoe.data.tokenizer import TextTokenizer
from emomoe.data.windows import BATCH_SIZE
from emomoe.errors import ConfigError, DataError
from emomoe.evaluate.domain_task import DOMAIN_TASK
from emomoe.evaluate.shipped_tasks import ShippedTaskConfig
from emomoe.experiments.benchmarks import (
    check_limit,
    evaluate_tasks,
    go_offline,
    item_limit,
    load_tasks,
    shipped_task_paths,
)
from emomoe.experiments.finetune import FinetuneRecipe, finetune_subset, recipe_config
from emomoe.experiments.protocol_report import FULL, calib_label, write_report
from emomoe.experiments.task_data import TaskExamples, model_tokenizer, subsample, task_examples, tokenize
from emomoe.interrupts import terminate_as_interrupt
from emomoe.io import atomic_write_text, check_output_dir
from emomoe.select.calibration import Calibration, example_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.methods import ExpertSelector, SelectMethod
from emomoe.select.routing import moe_layers
from emomoe.select.slicing import subset_config
from emomoe.select.subset import select_subset, selection_record, subset_bytes
from emomoe.select.weight_source import ModelWeights

RESULTS_FILE = "results.json"
SELECTIONS_DIR = "selections"
TASKS_DIR = "tasks"
WORK_DIR = ".work"
CELL_AXES = ("task", "model", "method", "keep", "num_calib")
"""What tells cells apart."""
AXES = ("tasks", "keep", "methods", "num_calib", "finetune", "online")
"""Settings a resumed run may change: they add cells (or only say where the data comes from), never
change a finished one."""


@dataclasses.dataclass
class ProtocolConfig(TaskDataConfig, ShippedTaskConfig):
    tasks: list[str] = dataclasses.field(default_factory=lambda: [DOMAIN_TASK])
    """lm-eval tasks or groups (a group is one task: one selection for all its tasks); the default
    is the shipped domain task."""
    keep: list[str] = dataclasses.field(default_factory=lambda: ["0.25", "0.125"])
    """Routed experts kept per MoE layer, each spelled as in select: a fraction (0.25) or a count (8)."""
    methods: list[SelectMethod] = dataclasses.field(default_factory=lambda: [SelectMethod.LAYERWISE])
    """Selection methods, side by side (layerwise, global, easy-ep, reap, random)."""
    num_calib: list[int] = ranged(default_factory=lambda: [0], ge=0)
    """Calibration sizes: examples of the task's pool to select on (0: all of them); random
    selection ignores them."""
    calib_num_fewshot: int | None = ranged(None, ge=0)
    """Examples in each calibration (selection) prompt, where num_fewshot sets those of the
    evaluation and fine-tuning prompts (the official scripts' separate selection and evaluation
    shot counts); None means num_fewshot's."""
    finetune: bool = False
    """Also fine-tune every subset and whole model for an epoch on the task's training examples
    (the recipe's settings) and evaluate it again."""
    recipe: FinetuneRecipe = dataclasses.field(default_factory=FinetuneRecipe)
    """How --finetune trains: the paper's recipe by default."""
    limit: float | None = None
    """At most this many held-out items per task (a fraction of them if below 1); None means all."""
    seq_len: int | None = ranged(None, ge=1)
    """Tokens of a calibration or fine-tuning row at most (a longer example loses its end); None
    means each model's max_seq_len."""
    batch_size: int = ranged(BATCH_SIZE, ge=1)
    """Rows per forward pass: calibration examples, lm-eval requests, fine-tuning examples."""
    seed: int = 0
    """Seed of the calibration draw, the few-shot demonstrations, the random method and the shipped tasks' items."""

    def __post_init__(self) -> None:
        self.methods = [SelectMethod(m) for m in self.methods]
        self.keep = [str(k) for k in self.keep]

    def validate(self) -> None:
        super().validate()
        for name in ("tasks", "keep", "methods", "num_calib"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ConfigError(f"{name}: expected distinct values, at least one, got {values}")
        for keep in self.keep:
            KeepSpec.parse(keep)
        check_limit(self.limit)

    def fixed_settings(self) -> dict[str, Any]:
        """The settings a finished cell depends on (all but the axes)."""
        return {k: v for k, v in self.to_dict().items() if k not in AXES}

    def cell_sizes(self, method: SelectMethod) -> list[int | None]:
        return list(self.num_calib) if method.needs_calibration else [None]


def run_protocol(
    checkpoints: dict[str, str | Path],
    out_dir: str | Path,
    cfg: ProtocolConfig | None = None,
    *,
    references: dict[str, str | Path] | None = None,
    data: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """Run the protocol on the `checkpoints` (selected from) and `references` (evaluated whole),
    into `out_dir`: results.json, report.md and the selections. Shipped tasks are built from the
    token store `data` (default: that of the first checkpoint's run). An earlier run's results in
    `out_dir` are reused, unless `force` starts over. `fields` set fields of `cfg`."""
    cfg = (cfg or ProtocolConfig()).replace(**fields)
    references = dict(references or {})
    models = {**{n: ("selected", Path(c)) for n, c in checkpoints.items()},
              **{n: ("reference", Path(c)) for n, c in references.items()}}
    if not checkpoints or len(models) != len(checkpoints) + len(references):
        raise ConfigError(f"models: expected at least one checkpoint, and names that differ, got {', '.join(models)}")
    out_dir = Path(out_dir)
    check_output_dir(out_dir)
    results = _earlier_results(out_dir, cfg, models, force)
    if not cfg.online:
        go_offline()
    shipped = shipped_task_paths(cfg.tasks, out_dir / TASKS_DIR, cfg, cfg.seed, data=data,
                                 checkpoint=next(iter(checkpoints.values())))
    loaded, examples = {}, {}
    for task in cfg.tasks:
        loaded[task] = load_tasks([task], include_path=[*cfg.include_path, *shipped], num_fewshot=cfg.num_fewshot,
                                  seed=cfg.seed)
        examples[task] = task_examples(task, loaded[task], cfg.splits)
        if cfg.calib_num_fewshot is not None and cfg.calib_num_fewshot != cfg.num_fewshot:
            shots = load_tasks([task], include_path=[*cfg.include_path, *shipped], num_fewshot=cfg.calib_num_fewshot,
                               seed=cfg.seed)
            calibration = task_examples(task, shots, cfg.splits)
            examples[task] = dataclasses.replace(examples[task], calibration=calibration.calibration, info={
                **examples[task].info, "calibration_sources": calibration.info["sources"]
            })
        results["tasks"][task] = examples[task].info
    calibrations = {  # made and checked before any work
        (task, name): _calibrations(examples[task], Path(checkpoint), cfg, data)
        for task in cfg.tasks for name, checkpoint in checkpoints.items()
    }
    run = _Run(out_dir, cfg, results, loaded, examples, calibrations, progress)
    try:
        with terminate_as_interrupt():
            for name, (role, checkpoint) in models.items():
                run.model(name, role, checkpoint, data)
    except KeyboardInterrupt:
        # results.json holds every finished cell (each written when it finished); the one in
        # progress is dropped, and the same command continues from the others.
        write_report(out_dir, results)
        tqdm.write(f"stopped: {len(results['cells'])} finished cells kept in {out_dir / RESULTS_FILE}; "
                   "the same command continues from them", file=sys.stderr)
        raise
    finally:
        run.bar.close()
    write_report(out_dir, results)
    return results


def _earlier_results(out_dir: Path, cfg: ProtocolConfig, models: dict[str, tuple[str, Path]], force: bool) -> dict:
    """The results to add to: an earlier run's in `out_dir` (checked to have been made the same
    way), or new ones."""
    path = out_dir / RESULTS_FILE
    fresh = {"settings": cfg.fixed_settings(), "models": {}, "tasks": {}, "cells": []}
    if force or not path.is_file():
        return fresh
    try:
        earlier = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); pass --force to start over") from None
    changed = sorted(k for k, v in fresh["settings"].items() if earlier["settings"].get(k) != v)
    moved = sorted(n for n, (_, c) in models.items()
                   if n in earlier["models"] and earlier["models"][n]["checkpoint"] != str(c.resolve()))
    if changed or moved:
        what = ", ".join([*(f"{k} (was {earlier['settings'].get(k)})" for k in changed),
                          *(f"model {n} (was {earlier['models'][n]['checkpoint']})" for n in moved)])
        raise DataError(f"{path}: its cells were made with another {what}; pass --force to start over, "
                        "or another --out")
    return earlier


def _calibrations(
    examples: TaskExamples, checkpoint: Path, cfg: ProtocolConfig, data: str | Path | None
) -> dict[int, Calibration]:
    """Calibration size -> the calibration rows of the task for the model at `checkpoint`, checked
    to hold enough tokens (none if every method is random)."""
    if not any(m.needs_calibration for m in cfg.methods):
        return {}
    model_cfg = load_config(checkpoint)
    tokenizer = model_tokenizer(checkpoint, model_cfg, data=data)
    pool = tokenize(examples.calibration, tokenizer)
    calibrations = {}
    for num_calib in cfg.num_calib:
        picked = subsample(pool, num_calib, cfg.seed)
        info = {"source": "task", "task": examples.task, "splits": examples.info["splits"],
                "num_examples": len(picked), "seed": cfg.seed}
        calibrations[num_calib] = example_calibration(
            picked, tokenizer.eos_id, seq_len=cfg.seq_len or model_cfg.max_seq_len, batch_size=cfg.batch_size,
            info=info,
        )
        calibrations[num_calib].check_size()
    return calibrations


def _cell_key(cell: dict[str, Any]) -> tuple:
    return tuple(cell[axis] for axis in CELL_AXES)


class _Run:
    """The cells of one protocol run, done model by model, written as each is finished."""

    def __init__(self, out_dir: Path, cfg: ProtocolConfig, results: dict, loaded: dict, examples: dict[str, TaskExamples],
                 calibrations: dict[tuple[str, str], dict[int, Calibration]], progress: bool):
        self.out_dir, self.cfg, self.results, self.loaded, self.examples = out_dir, cfg, results, loaded, examples
        self.calibrations = calibrations
        self.cells = {_cell_key(c): c for c in results["cells"]}
        self.bar = tqdm(desc="protocol", unit="cell", disable=not progress)

    def model(self, name: str, role: str, checkpoint: Path, data: str | Path | None) -> None:
        cfg = self.cfg
        model, model_cfg = load_for_inference(checkpoint)
        tokenizer = model_tokenizer(checkpoint, model_cfg, data=data)
        with CheckpointReader(checkpoint) as reader:
            layers = moe_layers(model_cfg, where=str(checkpoint)) if role == "selected" else []
            total, active = model_cfg.num_params()
            self.results["models"][name] = {
                "checkpoint": str(checkpoint.resolve()), "role": role, "params": {"total": total, "active": active},
                "bytes": subset_bytes(reader, [], []), "routed": [layer.num_routed for layer in layers],
            }
            for task in cfg.tasks:
                finetune = tokenize(self.examples[task].finetune, tokenizer)
                evaluate = _evaluator(self.loaded[task], task, tokenizer, cfg)
                self._cell({"task": task, "model": name, "method": FULL, "keep": None, "num_calib": None},
                           lambda: evaluate(model), lambda: checkpoint, finetune, evaluate)
                if role != "selected":
                    continue
                source = ModelWeights(model, model_cfg)
                for method in cfg.methods:
                    for num_calib in cfg.cell_sizes(method):
                        self._subsets(task, name, checkpoint, reader, model, source, layers, method, num_calib,
                                      finetune, evaluate)

    def _subsets(self, task, name, checkpoint, reader, model, source, layers, method, num_calib, finetune,
                 evaluate) -> None:
        """The cells of one (task, model, method, calibration size): one selector, every keep."""
        cfg, selector, calibration = self.cfg, None, None
        for keep in cfg.keep:
            spec = KeepSpec.parse(keep)
            cell = {"task": task, "model": name, "method": str(method), "keep": spec.label(), "num_calib": num_calib}
            if self._complete(cell):
                continue
            if selector is None:
                calibration = self.calibrations[task, name].get(num_calib)
                selector = ExpertSelector(source, calibration.batches if calibration else [], method, seed=cfg.seed,
                                          where=name)
            num_keep = spec.resolve([layer.num_routed for layer in layers])
            kept = selector.choose(num_keep)
            sub_cfg = subset_config(reader.config, layers, num_keep)
            total, active = sub_cfg.num_params()
            record = selection_record(reader, sub_cfg, layers, kept, method=str(method), keep=spec.label(),
                                      seed=cfg.seed, calibration=calibration.info if calibration else None)
            selection = Path(SELECTIONS_DIR, task, name, str(method), spec.label(), f"{calib_label(num_calib)}.json")
            (self.out_dir / selection).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.out_dir / selection, json.dumps(record, indent=2) + "\n")
            cell.update(
                num_examples=calibration.info["num_examples"] if calibration else 0, routed_kept=num_keep,
                params={"total": total, "active": active}, bytes=subset_bytes(reader, layers, num_keep),
                selection=str(selection),
            )

            def masked(kept=kept) -> dict[str, float]:
                model.restrict_experts(kept)  # the sliced subset's logits, with no copy
                try:
                    return evaluate(model)
                finally:
                    model.restrict_experts(None)

            def sliced(selection=selection) -> Path:
                subset = self.out_dir / WORK_DIR / "subset"
                select_subset(checkpoint, subset, selection=self.out_dir / selection, force=True)
                return subset

            self._cell(cell, masked, sliced, finetune, evaluate)

    def _complete(self, cell: dict[str, Any]) -> bool:
        done = self.cells.get(_cell_key(cell))
        return done is not None and (not self.cfg.finetune or "after" in done)

    def _cell(self, cell: dict[str, Any], before: Callable[[], dict], weights: Callable[[], Path],
              finetune: list, evaluate: Callable) -> None:
        """Finish `cell`: its accuracy before (unless known) and, with --finetune, after fine-tuning
        the model that `weights` writes; then save the results."""
        if self._complete(cell):
            return
        cell = self.cells.setdefault(_cell_key(cell), cell)
        self.bar.set_postfix_str(" ".join(str(cell[a]) for a in CELL_AXES if cell[a] is not None))
        if "before" not in cell:
            cell["before"] = before()
        if self.cfg.finetune:
            work = self.out_dir / WORK_DIR
            try:
                config = recipe_config(self.cfg.recipe, seq_len=self.cfg.seq_len, batch_size=self.cfg.batch_size)
                done = finetune_subset(weights(), None, work / "finetuned", config, pairs=finetune, force=True)
                tuned, _ = load_for_inference(work / "finetuned")
                cell["after"] = evaluate(tuned)
                cell["finetune"] = {k: done[k] for k in ("num_steps", "first_ce", "last_ce")} | {
                    "num_examples": len(finetune)}
            finally:
                shutil.rmtree(work, ignore_errors=True)
        self.results["cells"] = list(self.cells.values())
        atomic_write_text(self.out_dir / RESULTS_FILE, json.dumps(self.results, indent=2) + "\n")
        self.bar.update()


def _evaluator(loaded: dict, task: str, tokenizer: TextTokenizer, cfg: ProtocolConfig) -> Callable:
    """model -> the task's scores on its held-out split: lm-eval's metrics ("acc", "acc_norm",
    "exact_match,strict-match": the filter named unless it is none) and the item count "n"."""
    from emomoe.experiments.harness import EmoLM

    def evaluate(model) -> dict[str, float]:
        lm = EmoLM(model=model, tokenizer=tokenizer, batch_size=cfg.batch_size)
        row = evaluate_tasks(lm, loaded, limit=item_limit(cfg.limit), seed=cfg.seed)["results"][task]
        scores = {key.removesuffix(",none"): float(v) for key, v in row.items()
                  if "," in key and "_stderr," not in key and isinstance(v, (int, float))}
        if not scores:
            raise ConfigError(f"task {task}: lm-eval reports no metric for it (a group needs an aggregate_metric_list)")
        return scores | ({"n": row["sample_len"]} if isinstance(row.get("sample_len"), int) else {})

    return evaluate

