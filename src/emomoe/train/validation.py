"""Token-weighted next-token loss per domain on held-out windows: the measure itself
(`loss_by_domain`, which `emomoe eval`, the sweep and the fine-tune also use), and validation during
training, split across data-parallel ranks.

Legend: B batch, S sequence, T tokens (B*S), V vocab, Y domains.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from emomoe import distributed
from emomoe.data.loader import Batch, eval_batches
from emomoe.model.losses import IGNORE_INDEX


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
    sums_Y = torch.zeros(len(domain_names), dtype=torch.float64)
    counts_Y = torch.zeros(len(domain_names), dtype=torch.float64)
    for batch in tqdm(batches, desc=progress, disable=progress is None, leave=False, unit="batch"):
        labels_T = batch["labels_BS"].reshape(-1)
        valid_T = labels_T != IGNORE_INDEX
        domains_T = batch["domain_ids_BS"].reshape(-1)[valid_T]
        domains_U = domains_T.unique()
        # A batch of one domain (the usual case: windows come domain by domain) needs only the mean
        # CE, which the model's fused LM head gives without the [T, V] logits: on a CPU, making them
        # and taking their cross-entropy cost more than the rest of a small model's forward.
        labels = batch["labels_BS"] if len(domains_U) == 1 else None
        out = model(batch["input_ids_BS"], doc_ids_BS=batch.get("doc_ids_BS"), labels_BS=labels)
        if out.lm_loss is not None:
            sums_Y[domains_U] += float(out.lm_loss.ce) * len(domains_T)
            counts_Y[domains_U] += len(domains_T)
            continue
        logits_TV = out.logits.reshape(-1, out.logits.shape[-1]).float()
        ce_T = F.cross_entropy(logits_TV, labels_T, ignore_index=IGNORE_INDEX, reduction="none")
        sums_Y.index_add_(0, domains_T, ce_T[valid_T].double())
        counts_Y.index_add_(0, domains_T, torch.ones_like(domains_T, dtype=torch.float64))
    model.train(was_training)
    return {
        name: DomainLoss(float(sums_Y[g]), int(counts_Y[g]))
        for g, name in enumerate(domain_names)
        if counts_Y[g] > 0
    }


class Validator:
    """Holds the held-out batches (built once) and measures token-weighted CE per domain on them."""

    def __init__(self, store, seq_len: int, batch_size: int, num_windows_per_domain: int):
        self.domains = list(store.domains)
        self.batches = list(
            eval_batches(
                store, "val", seq_len=seq_len, batch_size=batch_size,
                max_windows_per_domain=num_windows_per_domain or None,
            )
        )

    def __call__(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        """`val/<domain>` losses and `val/all` (every held-out token weighted equally)."""
        mine = [{k: v.to(device) for k, v in b.items()} for b in _rank_share(self.batches)]
        per_domain = loss_by_domain(model, mine, self.domains)
        sums_2Y = torch.zeros(2, len(self.domains), dtype=torch.float64)
        for g, name in enumerate(self.domains):
            if name in per_domain:
                sums_2Y[0, g] = per_domain[name].sum_nats
                sums_2Y[1, g] = per_domain[name].num_tokens
        distributed.all_reduce_sum_(sums_2Y)
        metrics = {
            f"val/{name}": float(sums_2Y[0, g] / sums_2Y[1, g]) for g, name in enumerate(self.domains) if sums_2Y[1, g] > 0
        }
        if sums_2Y[1].sum() > 0:
            metrics["val/all"] = float(sums_2Y[0].sum() / sums_2Y[1].sum())
        return metrics


def _rank_share(batches: list[Batch]) -> list[Batch]:
    """This rank's batches, round-robin; every rank gets the same count so sharded models stay in
    lockstep, the shortfall padded with a batch whose labels are all ignored (it adds no loss)."""
    rank, world = distributed.get_rank(), distributed.get_world_size()
    mine = batches[rank::world]
    per_rank = -(-len(batches) // world)
    if batches and len(mine) < per_rank:
        padding = dict(batches[0], labels_BS=torch.full_like(batches[0]["labels_BS"], IGNORE_INDEX))
        mine = mine + [padding]
    return mine
