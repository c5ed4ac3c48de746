import dataclasses

import numpy as np
import pytest

from emomoe.analyze.clusters import ClusterConfig
from emomoe.analyze.collect import Documents
from emomoe.analyze.modularity import cluster_summary, headline, layer_summary, model_summary
from tests.analyze.conftest import routed_layer, separable_routing


@pytest.fixture
def hand_layer():
    """Documents of 2, 1 and 1 tokens (domains a, a, b), 3 experts, top-1 routing."""
    docs = Documents(["a", "b"], [np.array([10, 11]), np.array([12]), np.array([13])], np.array([0, 0, 1]))
    probs_TE = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    experts_TK = np.array([[0], [2], [0], [2]])
    return routed_layer(3, probs_TE, experts_TK, docs), docs


def test_layer_summary_by_hand(hand_layer):
    routed, docs = hand_layer
    got = layer_summary(routed, docs, docs)
    assert (got["layer"], got["num_experts"], got["top_k"]) == (3, 3, 1)
    # document means: doc0 (.4, .25, .35), doc1 (.5, .4, .1), doc2 (.1, .1, .8); domain a = mean of doc0, doc1
    assert np.array(got["maps"]["mean_prob"]) == pytest.approx(np.array([[0.45, 0.325, 0.225], [0.1, 0.1, 0.8]]))
    # top-1 picks per token: doc0 (.5, 0, .5), doc1 (1, 0, 0), doc2 (0, 0, 1)
    assert np.array(got["maps"]["topk_freq"]) == pytest.approx(np.array([[0.75, 0.0, 0.25], [0.0, 0.0, 1.0]]))
    # cos((.75, 0, .25), (0, 0, 1)) = .25 / sqrt(.625); cos of the probability vectors = .2575 / (.5989574 * .8124038)
    assert got["similarity"]["topk_freq"][0][1] == pytest.approx(0.316228, abs=1e-6)
    assert got["mean_off_diagonal"]["topk_freq"] == pytest.approx(0.316228, abs=1e-6)
    assert got["mean_off_diagonal"]["mean_prob"] == pytest.approx(0.529187, abs=1e-6)
    # entropies: doc0 1.558872, doc1 1.360964, doc2 0.921928 bits
    assert got["per_domain"]["entropy_bits"] == pytest.approx([1.459918, 0.921928], abs=1e-6)
    # weights above 1/3: doc0 .4 and .35, doc1 .5 and .4, doc2 .8
    assert got["per_domain"]["experts_above_uniform"] == pytest.approx([2.0, 1.0])
    assert got["per_domain"]["distinct_experts"] == pytest.approx([1.5, 1.0])
    # top-1 x domain counts: expert 0 (2, 0), expert 2 (1, 1)
    assert got["top1_domain_mi_bits"] == pytest.approx(0.3112781, abs=1e-6)
    assert got["top1_domain_nmi"] == pytest.approx(0.3437110, abs=1e-6)
    assert got["prefix_similarity"] == got["similarity"]  # these documents are their own prefixes


def test_prefix_similarity_reads_only_the_prefix_tokens(hand_layer):
    """Whole documents as in `hand_layer`; prefixes of one token: doc0 is its first token alone."""
    routed, docs = hand_layer
    first = [0, 2, 3]  # doc0's second token is not in its prefix
    routed = dataclasses.replace(
        routed, prefix_probs_TE=routed.prefix_probs_TE[first], prefix_experts_TK=routed.prefix_experts_TK[first]
    )
    got = layer_summary(routed, docs, docs.prefix(1))
    assert got["similarity"]["topk_freq"][0][1] == pytest.approx(0.316228, abs=1e-6)  # whole documents, as above
    # prefix tokens: doc0 token 0 (top-1: expert 0), doc1, doc2; domain a = (1, 0, 0), b = (0, 0, 1)
    assert got["prefix_similarity"]["topk_freq"][0][1] == pytest.approx(0.0)
    # mean probabilities: a = mean(.6 .3 .1, .5 .4 .1) = (.55, .35, .1); b = (.1, .1, .8); cos = .17 / (.659545 * .812404)
    assert got["prefix_mean_off_diagonal"]["mean_prob"] == pytest.approx(0.17 / (0.6595453 * 0.8124038), abs=1e-6)


def test_cluster_summary_on_separable_domains():
    layers, docs = separable_routing()
    got = cluster_summary(layers, docs, ClusterConfig(num_clusters=2), None, num_top_tokens=2)
    assert got["purity"] == 1.0 and got["nmi"] == pytest.approx(1.0)
    a = got["examples"]["a"]["clusters"][0]
    assert got["examples"]["a"] == {"pieces": ["#1 ", "#1 ", "#2 "], "clusters": [a, a, a]}
    assert got["clusters"][a] == {"size": 5, "top_tokens": [["#1", 3], ["#2", 1]]}
    assert got["clusters"][1 - a] == {"size": 4, "top_tokens": [["#7", 3], ["#8", 1]]}
    assert got["mean_top_cluster_share_per_doc"] == 1.0
    assert got["first_token"]["share_of_first_tokens"] == 0.5
    assert got["table"][a] == [5, 0]


def test_headline_reads_the_last_layer():
    layers, docs = separable_routing()
    summary = model_summary(layers, docs, docs, ClusterConfig(num_clusters=2), None, num_top_tokens=2)
    last = summary["layers"][-1]
    assert headline(summary) == {
        "last_layer_similarity_topk_freq": last["mean_off_diagonal"]["topk_freq"],
        "last_layer_similarity_mean_prob": last["mean_off_diagonal"]["mean_prob"],
        "last_layer_prefix_similarity_topk_freq": last["prefix_mean_off_diagonal"]["topk_freq"],
        "cluster_domain_nmi": summary["clusters"]["nmi"],
        "last_layer_top1_domain_nmi": last["top1_domain_nmi"],
    }
    assert last["mean_off_diagonal"]["topk_freq"] == pytest.approx(0.0)
