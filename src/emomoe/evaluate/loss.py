"""Held-out loss of a saved checkpoint per domain (the `emomoe eval` verb's library call); the
token-weighted loss itself is `emomoe.train.validation.loss_by_domain`, which training validates with.

Restricted to a selection of experts, the loss is the sliced subset's; with several selections
(auto), every window runs with the one its first tokens choose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from emomoe.checkpoint import check_fits, load_config, load_for_inference
from emomoe.checkpoint.selection import SelectionConfig, load_selections
from emomoe.data.loader import Batch, eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.data.windows import HeldOutConfig
from emomoe.model.selection import Selections
from emomoe.train.validation import DomainLoss, loss_by_domain


@dataclasses.dataclass
class EvalConfig(HeldOutConfig, SelectionConfig):
    domains: list[str] | None = None
    """Domains to evaluate; None means every domain of the store."""


def evaluate_checkpoint(
    checkpoint: str | Path,
    store: str | Path | TokenStore,
    cfg: EvalConfig | None = None,
    *,
    progress: bool = False,
    **fields: Any,
) -> dict[str, Any]:
    """Held-out loss and perplexity of a checkpoint per domain, and over all tokens together.

    `fields` set fields of `cfg` (default: `EvalConfig()`), e.g. `num_eval_windows=0` for all."""
    cfg = (cfg or EvalConfig()).replace(**fields)
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    names = cfg.domains or store.domains
    store.domain_ids(names)
    model_cfg = load_config(checkpoint)
    seq_len = cfg.seq_len or model_cfg.max_seq_len
    check_fits(
        model_cfg, checkpoint, vocab_size=store.vocab_size, seq_len=seq_len, tokenizer_hash=store.tokenizer_hash,
        any_tokenizer=cfg.any_tokenizer,
    )
    # A bf16 subset of a big model too big for float32 weights keeps its stored dtype, and each
    # block computes in float32 (this CPU has no bf16 matmul).
    model, _ = load_for_inference(checkpoint, dtype="auto")
    selections = load_selections(checkpoint, model, cfg)
    batches = eval_batches(
        store, Split.VAL, seq_len=seq_len, batch_size=cfg.batch_size, domains=names,
        max_windows_per_domain=cfg.max_eval_windows,
    )
    result: dict[str, Any] = {"checkpoint": str(checkpoint), "data": str(store.path), "seq_len": seq_len}
    if selections is None or not selections.auto:
        per_domain = loss_by_domain(model, batches, store.domains, progress="eval" if progress else None)
    else:
        by_selection = split_by_selection(batches, selections)
        parts: dict[str, list[DomainLoss]] = {}
        for name, selected in by_selection.items():
            with selections.using(name):
                for domain, loss in loss_by_domain(model, selected, store.domains).items():
                    parts.setdefault(domain, []).append(loss)
        per_domain = {domain: _total(parts[domain]) for domain in store.domains if domain in parts}
        result["chosen"] = chosen_windows(by_selection, store.domains)
    if selections is not None:
        result["selection"] = list(cfg.selection)
    return {
        **result,
        "domains": {name: loss.to_dict() for name, loss in per_domain.items()},
        "all": _total(per_domain.values()).to_dict(),
    }


def _total(losses: Iterable[DomainLoss]) -> DomainLoss:
    losses = list(losses)
    return DomainLoss(sum(d.sum_nats for d in losses), sum(d.num_tokens for d in losses))


def split_by_selection(batches: Iterable[Batch], selections: Selections) -> dict[str, list[Batch]]:
    """Each batch's windows grouped by the selection their first tokens choose (one sub-batch per
    selection and batch)."""
    by_selection: dict[str, list[Batch]] = {}
    for batch in batches:
        for name, rows in selections.groups(batch["input_ids_BS"].tolist()).items():
            index_B = torch.tensor(rows)
            by_selection.setdefault(name, []).append({key: value[index_B] for key, value in batch.items()})
    return by_selection


def chosen_windows(by_selection: dict[str, list[Batch]], domain_names: list[str]) -> dict[str, dict[str, int]]:
    """Domain -> selection -> how many of its windows chose it (a window's domain is its first token's)."""
    chosen: dict[str, dict[str, int]] = {}
    for name, selected in by_selection.items():
        for batch in selected:
            for domain_id in batch["domain_ids_BS"][:, 0].tolist():
                per_domain = chosen.setdefault(domain_names[domain_id], {})
                per_domain[name] = per_domain.get(name, 0) + 1
    return chosen
