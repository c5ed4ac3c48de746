"""Per-domain validation loss during training, split across data-parallel ranks.

Legend: B batch, S sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from emomoe import distributed
from emomoe.data.loader import Batch, eval_batches
from emomoe.evaluate.loss import loss_by_domain
from emomoe.model.losses import IGNORE_INDEX


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
        sums_N = torch.zeros(2, len(self.domains), dtype=torch.float64)
        for g, name in enumerate(self.domains):
            if name in per_domain:
                sums_N[0, g] = per_domain[name].sum_nats
                sums_N[1, g] = per_domain[name].num_tokens
        distributed.all_reduce_sum_(sums_N)
        metrics = {
            f"val/{name}": float(sums_N[0, g] / sums_N[1, g]) for g, name in enumerate(self.domains) if sums_N[1, g] > 0
        }
        if sums_N[1].sum() > 0:
            metrics["val/all"] = float(sums_N[0].sum() / sums_N[1].sum())
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
