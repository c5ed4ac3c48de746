"""Token-weighted next-token loss per domain over held-out windows.

Legend: B batch, S sequence, T tokens (B*S), V vocab.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from emomoe.data.loader import eval_batches
from emomoe.data.store import Split, TokenStore
from emomoe.checkpoint import check_fits, load_config, load_for_inference
from emomoe.model.losses import IGNORE_INDEX

Batch = dict[str, torch.Tensor]


@dataclasses.dataclass
class DomainLoss:
    """Summed cross-entropy (nats) and the number of label tokens it covers."""

    sum_nats: float = 0.0
    num_tokens: int = 0

    @property
    def loss(self) -> float:
        return self.sum_nats / self.num_tokens if self.num_tokens else math.nan

    @property
    def ppl(self) -> float:
        return math.exp(min(self.loss, 700.0))

    def to_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "ppl": self.ppl, "num_tokens": self.num_tokens}


@torch.inference_mode()
def loss_by_domain(
    model: torch.nn.Module, batches: Iterable[Batch], domain_names: list[str], progress: str | None = None
) -> dict[str, DomainLoss]:
    """Sum the CE of every label token into its domain; domains without tokens are left out."""
    was_training = model.training
    model.eval()
    sums_G = torch.zeros(len(domain_names), dtype=torch.float64)
    counts_G = torch.zeros(len(domain_names), dtype=torch.float64)
    for batch in tqdm(batches, desc=progress, disable=progress is None, leave=False, unit="batch"):
        out = model(batch["input_ids_BS"], doc_ids_BS=batch.get("doc_ids_BS"))
        logits_TV = out.logits.reshape(-1, out.logits.shape[-1]).float()
        labels_T = batch["labels_BS"].reshape(-1)
        ce_T = F.cross_entropy(logits_TV, labels_T, ignore_index=IGNORE_INDEX, reduction="none")
        valid_T = labels_T != IGNORE_INDEX
        domains_T = batch["domain_ids_BS"].reshape(-1)[valid_T]
        sums_G.index_add_(0, domains_T, ce_T[valid_T].double())
        counts_G.index_add_(0, domains_T, torch.ones_like(domains_T, dtype=torch.float64))
    model.train(was_training)
    return {
        name: DomainLoss(float(sums_G[g]), int(counts_G[g]))
        for g, name in enumerate(domain_names)
        if counts_G[g] > 0
    }


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
