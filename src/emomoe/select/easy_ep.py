"""EASY-EP expert scores (Dong et al. 2025, arXiv 2504.06792), from one pass of the unpruned model.

For token t at an MoE layer with input h_t and output m_t, the token's weight is how much the
layer turns its hidden state, s_t = max(0, 1 - cos(h_t, h_t + m_t)); each routed expert i the
token chose contributes its gate weight times the norm of its output, g_it * |E_i(h_t)|. An
expert's score is the sum over tokens of s_t * g_it * |E_i(h_t)|.

The pass streams: one block at a time, each layer's experts read a chunk at a time.

Legend: T tokens, D model dim, E routed experts of a layer, K routed experts per token.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from emomoe.select.routing import MoELayer
from emomoe.select.stream import LayerStream, capture


def token_weights(h_TD: torch.Tensor, m_TD: torch.Tensor) -> torch.Tensor:
    """s_t = max(0, 1 - cos(h_t, h_t + m_t)), shape [T]."""
    return (1.0 - F.cosine_similarity(h_TD, h_TD + m_TD, dim=-1)).clamp(min=0.0)


def easy_ep_layer_scores(stream: LayerStream, layer: MoELayer) -> torch.Tensor:
    """EASY-EP score (float64 [E]) of every routed expert of `layer`, summed over the calibration
    tokens; the hidden states move on through the unpruned layer."""
    block = stream.unpruned_block(layer.index, keep_slot_norms=True)
    scores_E = torch.zeros(layer.num_routed, dtype=torch.float64)
    with capture(block.moe) as captured:
        for state in stream.run(block):
            (h_TD, *_), (m_TD, routed) = captured.pop()
            valid_T = state.valid_T
            norms_TK = block.moe.experts.slot_norms_TK[valid_T]
            contrib_TK = routed.weights_TK[valid_T] * norms_TK * token_weights(h_TD[valid_T], m_TD[valid_T])[:, None]
            scores_E.index_add_(0, routed.experts_TK[valid_T].flatten(), contrib_TK.flatten().double())
    return scores_E
