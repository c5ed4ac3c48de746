"""Routing health of one batch, per MoE layer: is the load balanced, are experts dying, do documents
stay within few experts (what EMO is for) while tokens still spread?

Legend: B batch, S sequence, T tokens (B*S), E routed experts of the layer, K routed experts per
token, G documents in the batch (one per row fragment).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emomoe.model.docs import Segments


@torch.no_grad()
def layer_health(
    router_logits_TE: torch.Tensor, experts_TK: torch.Tensor, seg_T: torch.Tensor, num_docs: int
) -> dict[str, float]:
    num_experts = router_logits_TE.shape[-1]
    counts_E = torch.bincount(experts_TK.flatten(), minlength=num_experts).float()
    probs_TE = torch.softmax(router_logits_TE.float(), dim=-1)
    doc_probs_GE = torch.zeros(num_docs, num_experts).index_add_(0, seg_T, probs_TE)
    doc_probs_GE /= doc_probs_GE.sum(-1, keepdim=True)
    used_GE = torch.zeros(num_docs, num_experts, dtype=torch.bool)
    used_GE[seg_T[:, None].expand_as(experts_TK), experts_TK] = True
    return {
        "load_max_over_mean": float(counts_E.max() / counts_E.mean()),
        "dead_experts": int((counts_E == 0).sum()),
        "token_entropy": float(torch.special.entr(probs_TE).sum(-1).mean()),
        "doc_entropy": float(torch.special.entr(doc_probs_GE).sum(-1).mean()),
        "experts_per_doc": float(used_GE.sum(-1).float().mean()),
    }


def routing_health(routing: Sequence, segments: Segments) -> dict[str, float]:
    """Flat metrics `routing/layer{i}/{name}` for every MoE layer's `LayerRouting`, whose documents
    are `segments` (the trainer passes the pool's, `Segments.for_pool`: those the router used).

    token_entropy: mean entropy (nats) of each token's router distribution.
    doc_entropy: mean over documents of the entropy of the document's averaged distribution;
      low values mean a document concentrates on few experts.
    experts_per_doc: mean number of distinct experts the tokens of a document were routed to.
    load_max_over_mean: the busiest expert's share of routed slots over the average share (1 = balanced).
    dead_experts: experts that received no token in this batch.
    """
    metrics = {}
    for i, layer in enumerate(routing):
        if layer.router_logits_TE.shape[-1] == 0:  # a dense layer routes nothing
            continue
        stats = layer_health(
            layer.router_logits_TE.detach().cpu(), layer.experts_TK.cpu(), segments.seg_T.cpu(), segments.num_segments
        )
        metrics.update({f"routing/layer{i}/{name}": value for name, value in stats.items()})
    return metrics
