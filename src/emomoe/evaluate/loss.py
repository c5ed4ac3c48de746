"""Token-weighted next-token loss per domain over held-out windows.

Legend: B batch, S sequence, T tokens (B*S), V vocab.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

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


def held_out_windows(
    store, domain: str, *, seq_len: int, batch_size: int, max_windows: int | None = None, split: str = "val"
) -> list[Batch]:
    """The first `max_windows` packed windows of one domain's documents in `split`, in batches."""
    from emomoe.data.loader import eval_batches

    batches = eval_batches(store, split=split, seq_len=seq_len, batch_size=batch_size, domains=[domain])
    return list(take_windows(batches, max_windows))


def take_windows(batches: Iterable[Batch], max_windows: int | None) -> Iterator[Batch]:
    """Pass batches through until `max_windows` rows have been yielded (the last batch trimmed)."""
    remaining = math.inf if max_windows is None else max_windows
    for batch in batches:
        if remaining <= 0:
            return
        num_rows = batch["input_ids_BS"].shape[0]
        if num_rows > remaining:
            batch = {k: v[: int(remaining)] for k, v in batch.items()}
            num_rows = int(remaining)
        remaining -= num_rows
        yield batch


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
        ce_T = F.cross_entropy(logits_TV, labels_T, ignore_index=-100, reduction="none")
        valid_T = labels_T != -100
        domains_T = batch["domain_ids_BS"].reshape(-1)[valid_T]
        sums_G.index_add_(0, domains_T, ce_T[valid_T].double())
        counts_G.index_add_(0, domains_T, torch.ones_like(domains_T, dtype=torch.float64))
    model.train(was_training)
    return {
        name: DomainLoss(float(sums_G[g]), int(counts_G[g]))
        for g, name in enumerate(domain_names)
        if counts_G[g] > 0
    }
