"""Expert scores from one pass of the unpruned model over the calibration tokens: the router mass,
EASY-EP and REAP of every routed expert of a layer, all from the same forward.

For token t at an MoE layer with input h_t and output m_t, every routed expert i the token chose
has a gate weight g_it (the weight that scales its output in the layer's sum: the routing
probability, renormalised over the top-k only in models that renormalise) and an output E_i(h_t),
whose L2 norm |E_i(h_t)| is taken before any weighting.

- Router mass: the mean over all tokens of expert i's routing probability (softmax over every
  routed expert, chosen or not). The `global` method's score, and a selection's calibration profile.
- EASY-EP (Dong et al. 2025, arXiv 2504.06792): sum over tokens of s_t * g_it * |E_i(h_t)|, where
  s_t = max(0, 1 - cos(h_t, h_t + m_t)) is how much the layer turns the token's hidden state.
- REAP (Lasby et al. 2025, "REAP the Experts", arXiv 2510.13999): the mean of g_it * |E_i(h_t)|
  over the tokens that chose expert i, and only those; an expert no token chose scores 0. Cerebras'
  reference observer and llm-compressor's REAP modifier compute it this way.

The pass streams: one block at a time, each layer's experts read a chunk at a time.

Legend: T tokens, D model dim, E routed experts of a layer, K routed experts per token, N rows (the
routed (token, expert) slots).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from emomoe.select.routing import MoELayer
from emomoe.select.stream import LayerStream, capture


@dataclasses.dataclass
class LayerScores:
    """Scores of every routed expert of one layer (float64 [E])."""

    mass_E: torch.Tensor
    easy_ep_E: torch.Tensor
    reap_E: torch.Tensor


def token_weights(h_TD: torch.Tensor, m_TD: torch.Tensor) -> torch.Tensor:
    """EASY-EP's s_t = max(0, 1 - cos(h_t, h_t + m_t)), shape [T]."""
    return (1.0 - F.cosine_similarity(h_TD, h_TD + m_TD, dim=-1)).clamp(min=0.0)


def layer_scores(stream: LayerStream, layer: MoELayer) -> LayerScores:
    """The scores of `layer` over the calibration tokens; the hidden states move on through the
    unpruned layer."""
    block = stream.unpruned_block(layer.index, keep_slot_norms=True)
    mass_E, easy_ep_E, reap_E, routed_E = (torch.zeros(layer.num_routed, dtype=torch.float64) for _ in range(4))
    num_tokens = 0
    with capture(block.moe) as captured:
        for state in stream.run(block):
            (h_TD, *_), (m_TD, routed) = captured.pop()
            valid_T = state.valid_T
            mass_E += routed.logits_TE[valid_T].float().softmax(dim=-1).sum(0, dtype=torch.float64)
            num_tokens += int(valid_T.sum())
            gated_TK = (routed.weights_TK[valid_T] * block.moe.experts.slot_norms_TK[valid_T]).double()
            slots_N = routed.experts_TK[valid_T].flatten()
            turned_T1 = token_weights(h_TD[valid_T], m_TD[valid_T]).double()[:, None]
            easy_ep_E.index_add_(0, slots_N, (gated_TK * turned_T1).flatten())
            reap_E.index_add_(0, slots_N, gated_TK.flatten())
            routed_E.index_add_(0, slots_N, torch.ones_like(slots_N, dtype=torch.float64))
    return LayerScores(mass_E / num_tokens, easy_ep_E, reap_E / routed_E.clamp(min=1.0))
