import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emomoe.model import LayerRouting
from emomoe.model.docs import Segments
from emomoe.train.routing_health import routing_health


def entropy(probs: list[float]) -> float:
    return -sum(p * math.log(p) for p in probs if p > 0)


def reference(logits_TE, experts_TK, doc_ids_BS):
    """Loops over tokens and documents; documents are (row, doc id) pairs."""
    B, S = doc_ids_BS.shape
    E = logits_TE.shape[1]
    probs = torch.softmax(logits_TE.double(), -1).tolist()
    counts = [0] * E
    for row in experts_TK.tolist():
        for e in row:
            counts[e] += 1
    docs = {}
    for t in range(B * S):
        docs.setdefault((t // S, int(doc_ids_BS.flatten()[t])), []).append(t)
    doc_entropies, distinct = [], []
    for tokens in docs.values():
        mean = [sum(probs[t][e] for t in tokens) / len(tokens) for e in range(E)]
        doc_entropies.append(entropy(mean))
        distinct.append(len({e for t in tokens for e in experts_TK[t].tolist()}))
    mean_count = sum(counts) / E
    return {
        "load_max_over_mean": max(counts) / mean_count,
        "dead_experts": sum(c == 0 for c in counts),
        "token_entropy": sum(entropy(p) for p in probs) / len(probs),
        "doc_entropy": sum(doc_entropies) / len(doc_entropies),
        "experts_per_doc": sum(distinct) / len(distinct),
    }


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3), seq=st.integers(1, 12), experts=st.integers(2, 6), top_k=st.integers(1, 2),
    seed=st.integers(0, 10_000),
)
def test_matches_reference(batch, seq, experts, top_k, seed):
    top_k = min(top_k, experts)
    gen = torch.Generator().manual_seed(seed)
    logits_TE = torch.randn(batch * seq, experts, generator=gen) * 3
    experts_TK = logits_TE.topk(top_k, dim=-1).indices
    is_eos_BS = torch.rand(batch, seq, generator=gen) < 0.3
    doc_ids_BS = is_eos_BS.long().cumsum(1) - is_eos_BS.long()
    got = routing_health([LayerRouting(logits_TE, experts_TK, torch.ones_like(experts_TK, dtype=torch.float))], Segments.from_doc_ids(doc_ids_BS))
    want = reference(logits_TE, experts_TK, doc_ids_BS)
    for name, value in want.items():
        assert got[f"routing/layer0/{name}"] == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_masked_logits_and_dense_layers():
    logits_TE = torch.tensor([[0.0, float("-inf"), 1.0], [2.0, float("-inf"), 0.0]])
    experts_TK = torch.tensor([[2], [0]])
    dense = LayerRouting(torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0))
    routed = LayerRouting(logits_TE, experts_TK, torch.ones(2, 1))
    got = routing_health([dense, routed], Segments.from_doc_ids(torch.zeros(1, 2, dtype=torch.long)))
    assert not any(k.startswith("routing/layer0/") for k in got)
    assert got["routing/layer1/dead_experts"] == 1
    assert all(math.isfinite(v) for v in got.values())
