"""Merging a (fine-tuned) subset's experts back into the full model at their original ids.

By default only the routed experts' weights go back, as in the paper's modular-development
experiment; the router rows, the shared experts and the non-MoE weights (attention, norms,
embeddings) can be merged too. Each merged tensor becomes (1 - alpha) * full + alpha * subset.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from emomoe.checkpoint import checkpoint_hash, load_model, save_model
from emomoe.checkpoint.selection import read_selection
from emomoe.config import Config, ranged
from emomoe.errors import DataError
from emomoe.io import refuse_existing
from emomoe.select.routing import MoELayer, moe_layers
from emomoe.select.slicing import kept_rows


@dataclasses.dataclass
class MergeConfig(Config):
    alpha: float = ranged(1.0, ge=0, le=1)
    """Each merged tensor becomes (1 - alpha) * full + alpha * subset; 1 copies the subset's."""
    router: bool = False
    """Also merge the kept experts' router rows."""
    shared: bool = False
    """Also merge the shared experts."""
    non_moe: bool = False
    """Also merge attention, norms and embeddings."""
    any_source: bool = False
    """Merge even if the full model is not the exact checkpoint the subset was selected from."""


def merge_subset(
    full_dir: str | Path,
    subset_dir: str | Path,
    out_dir: str | Path,
    cfg: MergeConfig | None = None,
    *,
    force: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """Write the full model with the subset's weights merged in to `out_dir` (an existing one only
    with `force`); returns the record. `fields` set fields of `cfg` (default: `MergeConfig()`)."""
    cfg = (cfg or MergeConfig()).replace(**fields)
    refuse_existing(out_dir, force)
    record = read_selection(subset_dir)
    full, model_cfg = load_model(full_dir)  # verified first: a damaged file is named as damaged, not as another model
    if not cfg.any_source and record["source_sha256"] != checkpoint_hash(full_dir):
        raise DataError(
            f"{subset_dir}: was selected from a different checkpoint than {full_dir} "
            f"(weights sha256 differ; pass --any-source to merge anyway)"
        )
    sub, _ = load_model(subset_dir)
    layers = moe_layers(model_cfg, where=str(full_dir))
    if [layer.index for layer in layers] != record["moe_layers"]:
        raise DataError(f"{subset_dir}: its MoE layers {record['moe_layers']} do not match {full_dir}'s")
    full_state, sub_state = full.state_dict(), sub.state_dict()
    with torch.no_grad():
        for layer, kept in zip(layers, record["kept_experts"]):
            for key, full_ids, sub_ids in _expert_rows(full_state, layer, kept, router=cfg.router, shared=cfg.shared):
                target = full_state[key]
                target[full_ids] = (1 - cfg.alpha) * target[full_ids] + cfg.alpha * sub_state[key][sub_ids]
        if cfg.non_moe:
            for key, target in full_state.items():
                if ".moe." not in key:
                    target.mul_(1 - cfg.alpha).add_(sub_state[key], alpha=cfg.alpha)
    merged = {
        "full": str(Path(full_dir).resolve()), "subset": str(Path(subset_dir).resolve()),
        "alpha": cfg.alpha, "router": cfg.router, "shared": cfg.shared, "non_moe": cfg.non_moe,
    }
    save_model(out_dir, full, model_cfg, meta={"merged": merged})
    return merged


def _expert_rows(state: dict[str, torch.Tensor], layer: MoELayer, kept: list[int], *, router: bool, shared: bool):
    """(state key, rows in the full model, rows in the subset) of every expert tensor to merge."""
    for key, tensor in state.items():
        if not key.startswith(layer.prefix) or (key.startswith(layer.prefix + "router.") and not router):
            continue
        full_ids = kept_rows(layer, kept, key, tuple(tensor.shape))  # the subset's rows, in its order
        if not shared:
            full_ids = full_ids[: len(kept)]  # the shared experts come last
        yield key, full_ids, list(range(len(full_ids)))
