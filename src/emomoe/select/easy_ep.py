"""EASY-EP expert scores (Dong et al. 2025, arXiv 2504.06792), from one pass of the unpruned model.

For token t at an MoE layer with input h_t and output m_t, the token's weight is how much the
layer turns its hidden state, s_t = max(0, 1 - cos(h_t, h_t + m_t)); each routed expert i the
token chose contributes its gate weight times the norm of its output, g_it * |E_i(h_t)|. An
expert's score is the sum over tokens of s_t * g_it * |E_i(h_t)|.

Legend: T tokens, D model dim, E routed experts of a layer, K routed experts per token,
N = T*K (token, expert) slots.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from emomoe.select.calibration import valid_tokens
from emomoe.select.routing import MoELayer


def slot_output_norms(experts: nn.Module, x_TD: torch.Tensor, experts_TK: torch.Tensor) -> torch.Tensor:
    """|E_i(x_t)| for every (token, chosen routed expert) slot, shape [T, K].

    Each slot runs as its own one-expert token with weight 1; the shared experts' output, which
    the experts module always adds, is subtracted again.
    """
    num_tokens, top_k = experts_TK.shape
    x_ND = x_TD.repeat_interleave(top_k, dim=0)
    experts_N1 = experts_TK.reshape(-1, 1)
    routed_ND = experts(x_ND, experts_N1, torch.ones_like(experts_N1, dtype=x_TD.dtype)) - experts(x_ND)
    return routed_ND.norm(dim=-1).view(num_tokens, top_k)


def token_weights(h_TD: torch.Tensor, m_TD: torch.Tensor) -> torch.Tensor:
    """s_t = max(0, 1 - cos(h_t, h_t + m_t)), shape [T]."""
    return (1.0 - F.cosine_similarity(h_TD, h_TD + m_TD, dim=-1)).clamp(min=0.0)


def easy_ep_scores(
    model: nn.Module, layers: list[MoELayer], batches: Iterable[dict[str, torch.Tensor]]
) -> list[torch.Tensor]:
    """Per MoE layer, the EASY-EP score of every routed expert, accumulated over `batches`."""
    scores = [torch.zeros(layer.num_routed, dtype=torch.float64) for layer in layers]
    valid = {}

    def hook_for(i: int):
        def hook(module: nn.Module, args, output) -> None:
            h_TD = args[0][valid["T"]]
            m_TD, routed = output[0][valid["T"]], output[1]
            experts_TK, weights_TK = routed.experts_TK[valid["T"]], routed.weights_TK[valid["T"]]
            norms_TK = slot_output_norms(module.experts, h_TD, experts_TK)
            contrib_TK = weights_TK * norms_TK * token_weights(h_TD, m_TD)[:, None]
            scores[i].index_add_(0, experts_TK.flatten(), contrib_TK.flatten().double())

        return hook

    with contextlib.ExitStack() as stack:
        for i, layer in enumerate(layers):
            stack.callback(layer.moe.register_forward_hook(hook_for(i)).remove)
        for batch in batches:
            valid["T"] = valid_tokens(batch)
            model(batch["input_ids_BS"], doc_ids_BS=batch.get("doc_ids_BS"))
    return scores
