"""Training losses as pure functions, and `compute_loss` that combines them with the paper's weights.

Legend: B batch, S sequence, T tokens, N rows (the tokens of a chunk), D model dim, E routed experts, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from emomoe import kernels

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
    tokens; labels equal to -100 are ignored. Computed in float32 at least, whatever the logits' dtype."""
    labels_T = labels_BS.reshape(-1)
    valid_T = labels_T != IGNORE_INDEX
    # bf16 logits (autocast) would round the logsumexp of a 32k vocabulary (about 10.4) to steps of
    # 1/16 and sum the token terms in bf16: the CE would add an error larger than the logits' own.
    logits_TV = logits_BSV.reshape(-1, logits_BSV.shape[-1])
    logits_TV = logits_TV.to(torch.promote_types(logits_TV.dtype, torch.float32))
    nll_T, lse_T = _TokenNLLAndLSE.apply(logits_TV, labels_T.clamp(min=0))
    num_valid = valid_T.sum().clamp(min=1)
    ce = (nll_T * valid_T).sum() / num_valid
    logit_z = (lse_T.square() * valid_T).sum() / num_valid
    return ce, logit_z


@dataclass
class LMHeadLoss:
    """CE and logit z-loss computed together with the LM head (see `lm_head_loss`)."""

    total: torch.Tensor
    """CE + logit_z_weight * logit z: the only term that carries gradients."""
    ce: torch.Tensor
    logit_z: torch.Tensor
    logit_z_weight: float


# Logit rows per chunk: a [N, V] block of about 8 MiB stays in the CPU's caches.
_CHUNK_BYTES = 8 * 2**20
_MIN_CHUNK = 64


def lm_head_chunk_rows(vocab_size: int, element_size: int) -> int:
    """Rows of the block of logits the fused LM head makes at a time."""
    return max(_MIN_CHUNK, _CHUNK_BYTES // (vocab_size * element_size))


def _cross_entropy_rows(logits_NV, targets_N1, scale_N, z_weight, nll_N, lse_N, grad: bool) -> torch.Tensor:
    """Writes the CE terms of a block of logits into `nll_N` and `lse_N`; with `grad`, turns the
    block into the gradient of scale * (nll + w_z * lse^2): scale * ((1 + 2 w_z lse) softmax - onehot).
    The PyTorch twin of the fused kernel `cross_entropy_rows`."""
    nll_N.copy_(-logits_NV.gather(1, targets_N1).squeeze(1))
    # logsumexp by hand, in place: exp(logits - max) is also the unnormalised softmax.
    max_N = logits_NV.amax(dim=-1)
    exp_NV = logits_NV.sub_(max_N[:, None]).exp_()
    sum_N = exp_NV.sum(dim=-1)
    lse_N.copy_(max_N + sum_N.log())
    nll_N += lse_N
    if not grad:
        return exp_NV
    grad_NV = exp_NV.mul_((scale_N * (1 + 2 * z_weight * lse_N) / sum_N)[:, None])
    return grad_NV.scatter_add_(1, targets_N1, -scale_N[:, None])


class _FusedLMHeadLoss(torch.autograd.Function):
    """CE + w_z * logit z of `hidden @ weight.T`, chunk by chunk, never holding the [T, V] logits.

    On a CPU the logits of a small model are its largest tensor, and each pass over them (the
    log-softmax, its backward, the two matmuls that read the gradient) goes to main memory. Here
    each [N, V] block is made, turned into its gradient (softmax - onehot, plus the z-loss term)
    and multiplied into the gradients of `hidden` and `weight` while it is in cache. The gradients
    are therefore computed in the forward pass, for the one scalar this returns; backward scales them.
    """

    @staticmethod
    def forward(ctx, hidden_TD, weight_VD, labels_T, z_weight: float, want_grad: bool):
        valid_T = labels_T != IGNORE_INDEX
        targets_T1 = labels_T.clamp(min=0)[:, None]
        scale_T = valid_T.to(hidden_TD.dtype) / valid_T.sum().clamp(min=1)
        num_tokens, vocab = len(labels_T), weight_VD.shape[0]
        nll_T, lse_T = hidden_TD.new_empty(num_tokens), hidden_TD.new_empty(num_tokens)
        grad_hidden_TD = torch.empty_like(hidden_TD) if want_grad else None
        # Written by the first chunk's matmul (zeros only when there is none).
        grad_weight_VD = (torch.empty_like if num_tokens else torch.zeros_like)(weight_VD) if want_grad else None
        fused = kernels.usable(hidden_TD, weight_VD)
        chunk = lm_head_chunk_rows(vocab, weight_VD.element_size())
        # One block for every chunk: a fresh [N, V] tensor per chunk costs page faults on the CPU.
        block_NV = hidden_TD.new_empty(min(chunk, num_tokens), vocab)
        for start in range(0, num_tokens, chunk):
            rows = slice(start, start + chunk)
            logits_NV = torch.mm(hidden_TD[rows], weight_VD.T, out=block_NV[: min(chunk, num_tokens - start)])
            if fused:  # the same terms, and the gradient in place, in one pass over each row
                nll_T[rows], lse_T[rows] = kernels.ops().cross_entropy_rows(
                    logits_NV, targets_T1[rows, 0], scale_T[rows], z_weight, want_grad
                )
                grad_NV = logits_NV
            else:
                grad_NV = _cross_entropy_rows(
                    logits_NV, targets_T1[rows], scale_T[rows], z_weight, nll_T[rows], lse_T[rows], want_grad
                )
            if want_grad:
                torch.mm(grad_NV, weight_VD, out=grad_hidden_TD[rows])
                if start == 0:
                    torch.mm(grad_NV.T, hidden_TD[rows], out=grad_weight_VD)
                else:
                    grad_weight_VD.addmm_(grad_NV.T, hidden_TD[rows])
        if want_grad:
            ctx.save_for_backward(grad_hidden_TD, grad_weight_VD)
        ce, logit_z = (nll_T * scale_T).sum(), (lse_T.square() * scale_T).sum()
        return ce + z_weight * logit_z, ce, logit_z

    @staticmethod
    def backward(ctx, grad_total, _grad_ce, _grad_logit_z):
        grad_hidden_TD, grad_weight_VD = ctx.saved_tensors
        return grad_hidden_TD * grad_total, grad_weight_VD * grad_total, None, None, None


def lm_head_loss(hidden_BSD: torch.Tensor, weight_VD: torch.Tensor, labels_BS: torch.Tensor, logit_z_weight: float) -> LMHeadLoss:
    """CE and logit z-loss of the logits `hidden @ weight.T` without materialising them; the same
    values as `cross_entropy_and_logit_z`, and gradients (through `total` only) for both inputs.
    Under no_grad or inference_mode it computes no gradient (a Function's `needs_input_grad` still
    says True there for a weight that requires one): evaluation pays for the loss only."""
    want_grad = torch.is_grad_enabled() and (hidden_BSD.requires_grad or weight_VD.requires_grad)
    total, ce, logit_z = _FusedLMHeadLoss.apply(
        hidden_BSD.reshape(-1, hidden_BSD.shape[-1]), weight_VD, labels_BS.reshape(-1), logit_z_weight, want_grad
    )
    return LMHeadLoss(total, ce.detach(), logit_z.detach(), logit_z_weight)


def router_losses(out: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
    """The summed router LB and z-losses of a forward, which must have computed them."""
    if out.lb_loss is None or out.router_z_loss is None:
        raise ValueError("the forward skipped the router losses (eval mode without autograd); pass aux_losses=True")
    return out.lb_loss, out.router_z_loss


def language_model_loss(
    out: ModelOutput, labels_BS: torch.Tensor, logit_z_weight: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(CE, logit z, CE + w_z * logit z) of a forward. When the model was given the labels
    (`out.lm_loss`) they come from its fused LM head, and only the third carries gradients."""
    if out.lm_loss is None:
        ce, logit_z = cross_entropy_and_logit_z(out.logits, labels_BS)
        return ce, logit_z, ce + logit_z_weight * logit_z
    if out.lm_loss.logit_z_weight != logit_z_weight:
        raise ValueError(f"the model's fused loss used logit_z_weight {out.lm_loss.logit_z_weight}, not {logit_z_weight}")
    return out.lm_loss.ce, out.lm_loss.logit_z, out.lm_loss.total


def compute_loss(out: ModelOutput, labels_BS: torch.Tensor, loss_cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Total = CE + w_z * logit z + w_lb * LB + w_rz * router z (router terms summed over layers);
    see `language_model_loss` for the CE and logit z."""
    ce, logit_z, lm_total = language_model_loss(out, labels_BS, loss_cfg.logit_z_weight)
    lb, router_z = router_losses(out)
    total = lm_total + loss_cfg.lb_weight * lb + loss_cfg.router_z_weight * router_z
    return {"ce": ce, "lb": lb, "router_z": router_z, "logit_z": logit_z, "total": total}
