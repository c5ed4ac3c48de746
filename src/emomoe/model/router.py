"""One router for both the standard top-k MoE and EMO's document-pool routing.

Legend: T tokens, D model dim, E routed experts of this layer, K routed experts per token,
W window (past steps of the load-balancing window).

The gate has a row for every expert of the layer (shared ones last, as in the HF layout) but
only the routed rows are used: shared experts always run with weight 1.0.

A router can be restricted to some of its routed experts (`restrict`, a buffer of kept ids): it
then routes exactly as the sliced subset keeping those experts does (softmax over their logits
only, top-k clamped to how many there are, no pool), for inference without a sliced copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from emomoe import distributed, kernels
from emomoe.model.config import LBScope, RouterConfig, parse_pool
from emomoe.model.docs import Segments
from emomoe.model.linear import Linear
from emomoe.model.losses import load_balancing_loss, router_z_loss
from emomoe.model.pool import draw_pool_sizes, pooled_softmax


def top_experts(scores_TE: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [T, k] of each token's k highest scores, highest first: `topk(...).indices`. Float32
    CPU scores go to a fused kernel (a sorted k-list per row; ties to the lower index), which is
    2.5-3x faster than torch.topk at k = 7 of 127 experts."""
    if kernels.usable(scores_TE):
        return kernels.ops().topk_indices(scores_TE, k)
    return scores_TE.topk(k, dim=-1).indices


@dataclass
class RouterOutput:
    logits_TE: torch.Tensor
    """Routed logits of every routed expert, before any pool mask or restriction."""
    experts_TK: torch.Tensor
    """The chosen routed experts, in the layer's numbering (restricted or not)."""
    weights_TK: torch.Tensor
    lb_loss: torch.Tensor | None
    """None when the forward was asked to skip the auxiliary losses."""
    z_loss: torch.Tensor | None


class Router(nn.Module):
    def __init__(self, d_model: int, num_experts: int, top_k: int, cfg: RouterConfig):
        super().__init__()
        self.num_routed = num_experts - cfg.num_shared_experts
        self.top_k = min(top_k, self.num_routed)
        self.renormalize = cfg.renormalize
        self.lb_scope = cfg.lb_scope
        self.lb_window = cfg.lb_window
        self.train_pool = parse_pool(cfg.pool, "pool")
        self.eval_pool = parse_pool(cfg.eval_pool, "eval_pool")
        self.train_pool_active = True
        """Off: training forwards route without the pool (a schedule's pool-free phase, see
        `TrainConfig.pool_start`)."""
        self.bias_update_rate = cfg.bias_update_rate
        self.gate = Linear(d_model, num_experts)
        # Not stored with the weights: a restriction is a choice made at inference (see `restrict`).
        self.register_buffer("kept_E", None, persistent=False)
        if self.bias_update_rate > 0:
            # Moves top-k selection only; the weights still come from the unbiased probabilities.
            self.register_buffer("score_bias_E", torch.zeros(self.num_routed))
        self.init_buffers()

    def init_buffers(self) -> None:
        """Training-time counts, never stored with the weights, so zero after a load: those pending
        for the next bias update, and the LB window's history (the trainer keeps that in its state,
        see `lb_history`)."""
        device = self.gate.weight.device
        if self.bias_update_rate > 0:
            self.register_buffer("pending_counts_E", torch.zeros(self.num_routed, device=device), persistent=False)
        if self.lb_window > 1:
            # Rows: the earlier training forwards of the window, oldest first; columns: the expert
            # counts, then the token count.
            history_WE1 = torch.zeros(self.lb_window - 1, self.num_routed + 1, device=device)
            self.register_buffer("lb_history_WE1", history_WE1, persistent=False)

    @property
    def pool(self) -> tuple[int, int] | None:
        if self.kept_E is not None:  # a sliced subset routes without a pool
            return None
        if not self.training:
            return self.eval_pool
        return self.train_pool if self.train_pool_active else None

    def restrict(self, kept: Sequence[int] | None) -> None:
        """Route only to the routed experts `kept` (ascending distinct ids), as the subset sliced to
        them does; None routes to all of them again. The weights are not touched."""
        if kept is None:
            self.kept_E = None
            return
        kept = list(kept)
        if not kept or kept != sorted(set(kept)) or kept[0] < 0 or kept[-1] >= self.num_routed:
            raise ValueError(f"restrict: expected ascending distinct ids in [0, {self.num_routed}), got {kept}")
        self.kept_E = torch.tensor(kept, dtype=torch.long, device=self.gate.weight.device)

    def forward(
        self,
        x_TD: torch.Tensor,
        segments: Segments | None = None,
        pool_seed: torch.Tensor | int | None = None,
        aux_losses: bool = True,
    ) -> RouterOutput:
        """Route tokens. `segments` is needed when a pool is active; `pool_seed` (a 0-dim int64 tensor
        or an int) fixes random pool sizes; `aux_losses=False` skips the LB and z-losses (inference
        has no use for them; the bias-balancing counts of a training forward are still taken).

        No op reads a value back to the host: on an accelerator this runs without a sync (given
        `Segments` sized without one), and under torch.compile it is one graph.

        Restricted (`restrict`), everything below runs on the kept experts' columns alone, as in the
        sliced subset (its losses too); only the chosen ids are mapped back to the layer's numbering.
        Training is refused then: the balancing state counts every routed expert.
        """
        kept_E = self.kept_E
        if kept_E is not None and self.training:
            raise ValueError("a router restricted to some experts routes for inference only; train a sliced subset")
        logits_TE = self.gate(x_TD)[:, : self.num_routed]
        scores_TE = logits_TE if kept_E is None else logits_TE.index_select(1, kept_E)
        probs_TE, keep_GE = self._probs(scores_TE, segments, pool_seed)
        select_TE = probs_TE
        if self.bias_update_rate > 0:
            select_TE = probs_TE + (self.score_bias_E if kept_E is None else self.score_bias_E.index_select(0, kept_E))
            if keep_GE is not None:
                select_TE = select_TE.masked_fill(~keep_GE.index_select(0, segments.seg_T), float("-inf"))
        experts_TK = top_experts(select_TE, min(self.top_k, probs_TE.shape[1]))
        weights_TK = probs_TE.gather(1, experts_TK)
        out = RouterOutput(logits_TE, experts_TK, weights_TK, lb_loss=None, z_loss=None)
        if aux_losses:
            out.lb_loss = self._lb_loss(probs_TE, experts_TK)
            out.z_loss = router_z_loss(self._masked_logsumexp(scores_TE, probs_TE, experts_TK, weights_TK))
        elif self.bias_update_rate > 0 and self.training:
            self._count_experts(experts_TK, self.num_routed)
        if self.renormalize:
            out.weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        if kept_E is not None:
            out.experts_TK = kept_E[experts_TK]
        return out

    def _masked_logsumexp(
        self, logits_TE: torch.Tensor, probs_TE: torch.Tensor, experts_TK: torch.Tensor, weights_TK: torch.Tensor
    ) -> torch.Tensor:
        """logsumexp over each token's pool, [T]: log p_e = l_e - logsumexp for any expert e in the
        pool, and the most probable one gives it to float precision without another pass over [T, E]."""
        if self.bias_update_rate > 0:  # the biased choice may pass over the most probable expert
            top_p_T, top_e_T = probs_TE.max(dim=-1)
        else:
            top_p_T, top_e_T = weights_TK[:, 0], experts_TK[:, 0]
        return logits_TE.gather(1, top_e_T[:, None]).squeeze(1) - top_p_T.log()

    def _probs(
        self, logits_TE: torch.Tensor, segments: Segments | None, pool_seed: torch.Tensor | int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The routing probabilities [T, E]: the softmax over each token's document pool while a pool
        is active (`pooled_softmax`), else over all routed experts; and the pools [G, E] or None."""
        pool = self.pool
        if pool is None or pool[0] >= self.num_routed:
            return logits_TE.softmax(dim=-1), None
        if segments is None:
            raise ValueError("an EMO pool is active, so the router needs the document segments")
        if pool[0] == pool[1]:
            sizes_G = torch.full((segments.num_segments,), pool[0], device=logits_TE.device)
        else:
            sizes_G = draw_pool_sizes(*pool, segments.num_segments, pool_seed, logits_TE.device)
        return pooled_softmax(logits_TE, segments.seg_T, segments.num_segments, sizes_G)

    @torch.no_grad()
    def _count_experts(self, experts_TK: torch.Tensor, num_experts: int) -> torch.Tensor:
        """Routed slots per expert [E] of `num_experts`; a training forward adds them to the pending
        bias counts."""
        slots = experts_TK.flatten()
        # scatter_add_: sync-free like bincount is not on GPU, and ~10x faster than index_add_ on CPU.
        counts_E = torch.zeros(num_experts, device=slots.device).scatter_add_(
            0, slots, torch.ones_like(slots, dtype=torch.float32)
        )
        if self.bias_update_rate > 0 and self.training:
            self.pending_counts_E += counts_E
        return counts_E

    def _lb_loss(self, probs_TE: torch.Tensor, experts_TK: torch.Tensor) -> torch.Tensor:
        counts_E = self._count_experts(experts_TK, probs_TE.shape[1])
        with torch.no_grad():
            # A fill, not a copy from the host: no sync on an accelerator.
            num_tokens = torch.full((1,), float(experts_TK.shape[0]), device=counts_E.device)
            totals_E1 = torch.cat([counts_E, num_tokens])
            # Only training forwards are in lockstep across ranks; eval passes may differ in count.
            if self.training:
                totals_E1 = self._training_totals(totals_E1)
        return load_balancing_loss(probs_TE, totals_E1[:-1], totals_E1[-1], experts_TK.shape[1])

    def _training_totals(self, totals_E1: torch.Tensor) -> torch.Tensor:
        """This forward's expert and token counts summed over the data-parallel group (global
        scope), then over the last `lb_window` training forwards."""
        if self.lb_scope == LBScope.GLOBAL and distributed.get_world_size() > 1:
            totals_E1 = distributed.all_reduce_sum_(totals_E1)
        if self.lb_window == 1:
            return totals_E1
        history_WE1 = self.lb_history_WE1
        window_E1 = totals_E1 + history_WE1.sum(dim=0)
        history_WE1.copy_(torch.cat([history_WE1[1:], totals_E1[None]]))
        return window_E1

    @torch.no_grad()
    def update_bias(self) -> None:
        """Move the selection bias toward balance using the counts since the last update."""
        if self.bias_update_rate <= 0:
            return
        counts_E = distributed.all_reduce_sum_(self.pending_counts_E.clone())
        self.score_bias_E += self.bias_update_rate * torch.sign(counts_E.mean() - counts_E)
        self.pending_counts_E.zero_()
