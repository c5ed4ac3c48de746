"""An MoE feed-forward layer: router plus stacked experts. With no routed experts it is a dense SwiGLU.

Legend: T tokens, D model dim.
"""

from __future__ import annotations

import torch
from torch import nn

from emomoe.model.config import RouterConfig
from emomoe.model.docs import Segments
from emomoe.model.experts import Experts
from emomoe.model.router import Router, RouterOutput


class MoE(nn.Module):
    def __init__(self, d_model: int, hidden: int, num_experts: int, top_k: int, router_cfg: RouterConfig):
        super().__init__()
        num_shared = router_cfg.num_shared_experts
        # A layer of shared experts only has nothing to route (and a gate would get no gradient).
        self.router = Router(d_model, num_experts, top_k, router_cfg) if num_experts > num_shared else None
        self.experts = Experts(num_experts, num_shared, d_model, hidden)

    def forward(
        self,
        x_TD: torch.Tensor,
        segments: Segments | None = None,
        pool_seed: torch.Tensor | None = None,
        aux_losses: bool = True,
    ) -> tuple[torch.Tensor, RouterOutput | None]:
        if self.router is None:
            return self.experts(x_TD), None
        routed = self.router(x_TD, segments, pool_seed, aux_losses)
        return self.experts(x_TD, routed.experts_TK, routed.weights_TK), routed
