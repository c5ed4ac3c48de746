"""Training losses as pure functions, and `compute_loss` that combines them with the paper's weights.

Shapes: B batch, S sequence, T tokens, E routed experts, V vocab.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from emomoe.model.config import LossConfig
    from emomoe.model.transformer import ModelOutput

IGNORE_INDEX = -100


def load_balancing_loss(
    probs_TE: torch.Tensor, counts_E: torch.Tensor, num_tokens: torch.Tensor | int, top_k: int
) -> torch.Tensor:
    """Switch-style balance loss n_r * sum_i f_i * P_i, equal to 1.0 at perfect balance.

    f_i = counts_i / (top_k * num_tokens) is the fraction of routed slots that went to expert i
    (counts may be summed over all data-parallel ranks; no gradient), and P_i is the mean routing
    probability of expert i over the local tokens, which carries the gradient.
    """
    num_experts = probs_TE.shape[-1]
    frac_E = counts_E.detach().to(probs_TE.dtype) / (top_k * num_tokens)
    return num_experts * (frac_E * probs_TE.mean(dim=0)).sum()


def router_z_loss(lse_T: torch.Tensor) -> torch.Tensor:
    """Mean squared log-partition of the router logits, given their logsumexp per token."""
    return lse_T.square().mean()


def cross_entropy_and_logit_z(logits_BSV: torch.Tensor, labels_BS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token CE and output-logit z-loss, both averaged over label tokens (-100 is ignored).

    Shares one logsumexp between the two, the costliest pass over [T, V].
    """
    logits_TV = logits_BSV.reshape(-1, logits_BSV.shape[-1])
    labels_T = labels_BS.reshape(-1)
    valid_T = labels_T != IGNORE_INDEX
    lse_T = logits_TV.logsumexp(dim=-1)
    target_T = logits_TV.gather(1, labels_T.clamp(min=0)[:, None]).squeeze(1)
    num_valid = valid_T.sum().clamp(min=1)
    ce = ((lse_T - target_T) * valid_T).sum() / num_valid
    logit_z = (lse_T.square() * valid_T).sum() / num_valid
    return ce, logit_z


def compute_loss(out: ModelOutput, labels_BS: torch.Tensor, loss_cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Total = CE + w_z * logit z + w_lb * LB + w_rz * router z (router terms summed over layers)."""
    ce, logit_z = cross_entropy_and_logit_z(out.logits, labels_BS)
    total = (
        ce
        + loss_cfg.logit_z_weight * logit_z
        + loss_cfg.lb_weight * out.lb_loss
        + loss_cfg.router_z_weight * out.router_z_loss
    )
    return {"ce": ce, "lb": out.lb_loss, "router_z": out.router_z_loss, "logit_z": logit_z, "total": total}
