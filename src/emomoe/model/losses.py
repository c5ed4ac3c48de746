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


class _TokenNLLAndLSE(torch.autograd.Function):
    """Per-token NLL and logsumexp of [T, V] logits with one [T, V] buffer each way.

    The LM-head output is the largest activation of a small model, and on CPU every fresh [T, V]
    tensor costs page faults: forward keeps only the log-softmax, and backward builds the
    gradient in a single new tensor: d nll/dx = softmax - onehot, d lse/dx = softmax.
    """

    @staticmethod
    def forward(ctx, logits_TV: torch.Tensor, labels_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logprobs_TV = logits_TV.log_softmax(dim=-1)
        index_T1 = labels_T[:, None]
        nll_T = -logprobs_TV.gather(1, index_T1).squeeze(1)
        lse_T = logits_TV[:, 0] - logprobs_TV[:, 0]
        ctx.save_for_backward(logprobs_TV, index_T1)
        return nll_T, lse_T

    @staticmethod
    def backward(ctx, grad_nll_T: torch.Tensor, grad_lse_T: torch.Tensor) -> tuple[torch.Tensor, None]:
        logprobs_TV, index_T1 = ctx.saved_tensors
        grad_TV = logprobs_TV.exp().mul_((grad_nll_T + grad_lse_T)[:, None])
        return grad_TV.scatter_add_(1, index_T1, -grad_nll_T[:, None]), None


def cross_entropy_and_logit_z(logits_BSV: torch.Tensor, labels_BS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token CE and output-logit z-loss (mean squared logsumexp), both averaged over label
    tokens; labels equal to -100 are ignored."""
    labels_T = labels_BS.reshape(-1)
    valid_T = labels_T != IGNORE_INDEX
    nll_T, lse_T = _TokenNLLAndLSE.apply(logits_BSV.reshape(-1, logits_BSV.shape[-1]), labels_T.clamp(min=0))
    num_valid = valid_T.sum().clamp(min=1)
    ce = (nll_T * valid_T).sum() / num_valid
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
