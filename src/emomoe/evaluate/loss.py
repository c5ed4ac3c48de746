"""Held-out loss of a saved checkpoint per domain (the `emomoe eval` verb's library call); the
token-weighted loss itself is `emomoe.train.validation.loss_by_domain`, which training validates with."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from emomoe.checkpoint import check_fits, load_config, load_for_inference
from emomoe.data.loader import eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.data.windows import HeldOutConfig
from emomoe.train.validation import DomainLoss, loss_by_domain


@dataclasses.dataclass
class EvalConfig(HeldOutConfig):
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
    batches = eval_batches(
        store, Split.VAL, seq_len=seq_len, batch_size=cfg.batch_size, domains=names,
        max_windows_per_domain=cfg.max_eval_windows,
    )
    per_domain = loss_by_domain(model, batches, store.domains, progress="eval" if progress else None)
    overall = DomainLoss(sum(d.sum_nats for d in per_domain.values()), sum(d.num_tokens for d in per_domain.values()))
    return {
        "checkpoint": str(checkpoint),
        "data": str(store.path),
        "seq_len": seq_len,
        "domains": {name: loss.to_dict() for name, loss in per_domain.items()},
        "all": overall.to_dict(),
    }
