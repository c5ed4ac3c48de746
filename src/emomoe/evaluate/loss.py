"""Held-out loss of a saved checkpoint per domain (the `emomoe eval` verb's library call); the
token-weighted loss itself is `emomoe.train.validation.loss_by_domain`, which training validates with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emomoe.checkpoint import check_fits, load_config, load_for_inference
from emomoe.data.loader import eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.train.validation import DomainLoss, loss_by_domain


def evaluate_checkpoint(
    checkpoint: str | Path,
    store: str | Path | TokenStore,
    *,
    domains: list[str] | None = None,
    seq_len: int | None = None,
    batch_size: int = 16,
    max_windows_per_domain: int | None = None,
    any_tokenizer: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Held-out loss and perplexity of a checkpoint per domain, and over all tokens together.

    `seq_len` None: the model's max_seq_len. `any_tokenizer`: evaluate even if the store was made
    with another tokenizer than the model's (see `check_fits`)."""
    store = store if isinstance(store, TokenStore) else TokenStore.open(store)
    names = domains or store.domains
    store.domain_ids(names)
    cfg = load_config(checkpoint)
    seq_len = seq_len or cfg.max_seq_len
    check_fits(
        cfg, checkpoint, vocab_size=store.vocab_size, seq_len=seq_len, tokenizer_hash=store.tokenizer_hash,
        any_tokenizer=any_tokenizer,
    )
    # A bf16 subset of a big model too big for float32 weights keeps its stored dtype, and each
    # block computes in float32 (this CPU has no bf16 matmul).
    model, _ = load_for_inference(checkpoint, dtype="auto")
    batches = eval_batches(
        store, Split.VAL, seq_len=seq_len, batch_size=batch_size, domains=names,
        max_windows_per_domain=max_windows_per_domain,
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
