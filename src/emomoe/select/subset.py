"""From a checkpoint to a saved subset model: choose experts, and stream the kept weights out.

A subset directory is an ordinary model checkpoint (it loads with `emomoe.checkpoint.load_model`
at its own size, without the source) plus `selection.json`, which records where it came from:
the source checkpoint and its fingerprint (`CheckpointReader.fingerprint`), the kept expert ids
per MoE layer in the source's numbering, the method, the calibration data and the seed.

The source is read through `CheckpointReader` (our checkpoints and HF directories, sharded or
not) one block at a time, and the subset is written through `ShardedWriter` as it is chosen, so
neither has to fit in memory; weights keep their stored dtype. A `selection.json` made earlier,
here or elsewhere, can be applied again to extract the same subset without calibration, but only
to the checkpoint it was made from.

Everything that can be checked is checked before anything is written (keep counts, calibration,
the selection's source, free disk space for the planned subset), and the directory appears
atomically: on any error, including a full disk mid-write, nothing is left behind and a previous
`out_dir` is intact.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emomoe.checkpoint import CONFIG_FILE, CheckpointReader, ShardedWriter, check_fits, save_model
from emomoe.checkpoint.selection import SELECTION_FILE, check_selection, read_selection, selection_path
from emomoe.config import ranged
from emomoe.data.tasks import TaskDataConfig
from emomoe.data.windows import WindowConfig
from emomoe.errors import ConfigError, DataError
from emomoe.io import atomic_path, check_output_dir, refuse_existing, write_checksums
from emomoe.model import ModelConfig
from emomoe.select.budget import BudgetUnit, SubsetSize, budget_of, check_budget, fit_counts, show_bytes
from emomoe.select.calibration import NUM_CALIB_WINDOWS, Calibration, load_calibration
from emomoe.select.keep import KeepSpec
from emomoe.select.methods import ExpertSelector, SelectMethod
from emomoe.select.routing import MoELayer, moe_layers
from emomoe.select.slicing import AddTensor, extract_subset, kept_rows, read_blocks, subset_config
from emomoe.select.weight_source import WeightSource

SUBSET_SHARD_BYTES = 2**29
"""Shard size of a written subset: the writer holds one shard in memory, so this bounds what
selection needs beyond one block's weights."""
_SPACE_MARGIN_BYTES = 16 * 2**20
"""Room for safetensors headers, the config and selection.json on top of the tensor bytes."""


@dataclasses.dataclass
class SelectConfig(WindowConfig, TaskDataConfig):
    keep: str | None = None
    """Routed experts kept per MoE layer: a count (8), a fraction of the routed experts (0.25), or one
    count per MoE layer (8,8,4,4); one of keep, budget_gb and keep_params is needed unless an earlier
    selection is reused."""
    budget_gb: float | None = ranged(None, gt=0)
    """Instead of keep: the most the subset's weights may take, in GB (1e9 bytes, in their stored dtype,
    as written). Every layer keeps its top-k routed experts, then the rest of all layers enter in one
    ranking (each expert's share of its layer's score) until the next would not fit."""
    keep_params: int | None = ranged(None, gt=0)
    """Instead of keep: the most parameters the subset may have, counts per layer as for budget_gb."""
    method: SelectMethod = SelectMethod.LAYERWISE
    """How experts are ranked: layerwise (the paper's greedy), global, easy-ep, reap or random."""
    num_calib_windows: int = ranged(NUM_CALIB_WINDOWS, ge=1)
    """Calibration windows of seq_len tokens; at least 64 tokens in all (fewer than 512 get a warning)."""
    num_calib: int = ranged(0, ge=0)
    """With --task: calibration examples drawn from its pool (see splits), each a row of its own; 0 means all."""
    seed: int = 0
    """Seed of the random method, and with --task of the examples drawn and their few-shot demonstrations."""
    router_profile: bool = True
    """Record the full model's router mass on the calibration tokens in selection.json, which
    `--selection auto` compares prompts with; free for global, easy-ep and reap, one more pass of
    the unpruned model for layerwise."""

    def __post_init__(self) -> None:
        self.method = SelectMethod(self.method)
        if self.keep is not None:  # from Python, a KeepSpec or a number is as good as its spelling
            self.keep = str(self.keep)

    def validate(self) -> None:
        super().validate()
        if self.keep is not None:
            KeepSpec.parse(self.keep)
        given = [name for name in ("keep", "budget_gb", "keep_params") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)}: give one of them")


def select_subset(
    checkpoint: str | Path,
    out_dir: str | Path,
    cfg: SelectConfig | None = None,
    *,
    calibration: Calibration | str | None = None,
    store: str | Path | None = None,
    tokenizer: str | Path | None = None,
    selection: str | Path | None = None,
    force: bool = False,
    progress: bool = False,
    max_shard_bytes: int = SUBSET_SHARD_BYTES,
    **fields: Any,
) -> dict[str, Any]:
    """Select a subset of `checkpoint` (or take its kept experts from the `selection` file, a
    selection.json or a subset directory) and write it to `out_dir`; return its selection record.

    `calibration` is windows already made, or a `--calib` source: domains of the token store
    `store`, or text files tokenized with `tokenizer` (default: the store's), cut as `cfg` says.
    `fields` set fields of `cfg` (default: `SelectConfig()`), e.g. `keep="0.25"`.

    Everything is checked before anything is written (an existing `out_dir` is replaced only with
    `force`), and the directory appears atomically.
    """
    cfg = (cfg or SelectConfig()).replace(**fields)
    method = cfg.method
    refuse_existing(out_dir, force)
    budget = budget_of(cfg.budget_gb, cfg.keep_params)
    if (cfg.keep is None and budget is None) == (selection is None):
        raise ConfigError(
            "give either --keep, --budget-gb or --keep-params (and calibration), or --selection (an earlier "
            "selection to reuse)"
        )
    check_output_dir(out_dir)
    with CheckpointReader(checkpoint) as reader:
        layers = moe_layers(reader.config, where=str(checkpoint))
        if selection is not None:
            given = read_selection(selection)
            path = selection_path(selection)
            kept = check_selection(given, reader.config, reader.fingerprint(), reader.directory, path)
            how = {key: given.get(key) for key in _HOW} | {"reused_from": str(path.resolve())}

            def extract(add: AddTensor) -> list[list[int]]:
                extract_subset(reader, read_blocks(reader, layers, kept), add)
                return kept

            return _write_subset(out_dir, reader, layers, [len(k) for k in kept], how, max_shard_bytes, extract)
        if budget is None:
            keep = KeepSpec.parse(cfg.keep)
            num_keep = keep.resolve([layer.num_routed for layer in layers])
        else:
            size = subset_size(reader, layers, budget.unit)
            floor = [reader.config.moe.top_k_in_layer(layer.index) for layer in layers]
            check_budget(floor, size, budget)  # before the calibration pass, not after it
        if not method.needs_calibration:
            calibration = None
        else:
            if isinstance(calibration, str):
                calibration = load_calibration(
                    calibration, store=store, tokenizer=tokenizer, num_windows=cfg.num_calib_windows,
                    seq_len=cfg.seq_len or reader.config.max_seq_len, batch_size=cfg.batch_size,
                )
            if calibration is None or not calibration.batches:
                raise ConfigError(
                    f"method {method}: needs --calib, or calibration= (domains of a token store, or text files)"
                )
            if "vocab_size" in calibration.info:
                info = calibration.info
                check_fits(
                    reader.config, checkpoint, vocab_size=info["vocab_size"], seq_len=info["seq_len"],
                    tokenizer_hash=info["tokenizer_hash"], any_tokenizer=cfg.any_tokenizer,
                )
            calibration.check_size()
        selector = ExpertSelector(
            reader, calibration.batches if calibration else [], method, seed=cfg.seed, progress=progress,
            where=str(checkpoint),
        )
        if budget is not None:
            num_keep = fit_counts(selector.budget_shares(), floor, size, budget)
            keep = KeepSpec(per_layer=tuple(num_keep))
        how = {"method": str(method), "keep": keep.label(), "seed": cfg.seed,
               "calibration": calibration.info if calibration else None}
        if budget is not None:
            how["budget"] = {"unit": str(budget.unit), "limit": budget.limit, "used": size(num_keep)}
        if calibration and cfg.router_profile:
            how["router_profile"] = [mass_E.tolist() for mass_E in selector.profile()]
        return _write_subset(
            out_dir, reader, layers, num_keep, how, max_shard_bytes,
            lambda add: selector.write_subset(num_keep, add),
        )


_HOW = ("method", "keep", "budget", "seed", "calibration", "router_profile")
"""The fields of a selection record that say how its experts were chosen, and on what."""


def _write_subset(
    out_dir: str | Path,
    reader: CheckpointReader,
    layers: list[MoELayer],
    num_keep: list[int],
    how: dict[str, Any],
    max_shard_bytes: int,
    write: Callable[[AddTensor], list[list[int]]],
) -> dict[str, Any]:
    """Check the free disk, then let `write` hand the subset's tensors over (it returns the kept
    ids) and write them, the config and selection.json as one atomic directory."""
    sub_cfg = subset_config(reader.config, layers, num_keep)
    check_free_space(out_dir, subset_bytes(reader, layers, num_keep))
    # atomic_path turns a full disk into one line naming out_dir, and leaves any previous one intact.
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        with ShardedWriter(tmp, max_shard_bytes) as writer:
            kept = write(writer.add)
        sub_cfg.to_yaml(tmp / CONFIG_FILE)
        record = selection_record(reader, sub_cfg, layers, kept, **how)
        (tmp / SELECTION_FILE).write_text(json.dumps(record, indent=2) + "\n")
        write_checksums(tmp)
    return record


def subset_bytes(source: WeightSource, layers: list[MoELayer], num_keep: list[int]) -> int:
    """Bytes of the tensors of a subset keeping `num_keep` routed experts per MoE layer."""
    # How many rows a tensor keeps depends on how many experts are kept, not on which.
    some_kept = [(layer, list(range(n))) for layer, n in zip(layers, num_keep)]
    total = 0
    for name in source.names():
        shape = source.shape(name)
        layer, kept = next(((l, k) for l, k in some_kept if name.startswith(l.prefix)), (None, None))
        num_rows = shape[0] if layer is None else len(kept_rows(layer, kept, name, shape))
        total += num_rows * torch.Size(shape[1:]).numel() * source.dtype(name).itemsize
    return total


def subset_size(source: WeightSource, layers: list[MoELayer], unit: BudgetUnit) -> SubsetSize:
    """The size in `unit` of a subset of `source`, given its routed experts per MoE layer."""
    if unit is BudgetUnit.BYTES:
        return lambda num_keep: subset_bytes(source, layers, num_keep)
    return lambda num_keep: subset_config(source.config, layers, num_keep).num_params()[0]


def check_free_space(out_dir: str | Path, needed: int) -> None:
    """DataError unless the file system `out_dir` goes to has room for `needed` bytes (and a margin)."""
    out_dir = Path(out_dir).resolve()
    existing = next(p for p in (out_dir, *out_dir.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    if free < needed + _SPACE_MARGIN_BYTES:
        raise DataError(
            f"{out_dir}: the subset needs {show_bytes(needed + _SPACE_MARGIN_BYTES)} of free disk, "
            f"only {show_bytes(free)} is free there"
        )


def selection_record(
    reader: CheckpointReader,
    sub_cfg: ModelConfig,
    layers: list[MoELayer],
    kept: list[list[int]],
    **how: Any,
) -> dict[str, Any]:
    """selection.json: the source, the kept experts, how they were chosen (`how`), the sizes."""
    total, active = sub_cfg.num_params()
    source_total, source_active = reader.config.num_params()
    return {
        **how,
        "source_checkpoint": str(reader.directory.resolve()),
        "source_format": reader.format,
        "source_sha256": reader.fingerprint(),
        "moe_layers": [layer.index for layer in layers],
        "kept_experts": kept,
        "num_routed_experts": [layer.num_routed for layer in layers],
        "num_shared_experts": [layer.num_shared for layer in layers],
        "num_params": {"total": total, "active": active},
        "source_num_params": {"total": source_total, "active": source_active},
    }


def save_subset(out_dir: str | Path, model: nn.Module, cfg: ModelConfig, record: dict[str, Any]) -> Path:
    """Write an in-memory subset model and its selection.json as one atomic directory."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        save_model(tmp, model, cfg)
        (tmp / SELECTION_FILE).write_text(json.dumps(record, indent=2) + "\n")
        write_checksums(tmp)
    return out_dir
