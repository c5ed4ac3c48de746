"""Every number of one model's modularity analysis, from the routing its collection pass kept.

Per MoE layer (§9.2 of the spec): domain x expert maps of the mean routed probability and of the
top-k frequency (a domain's vector is the mean of its documents' vectors), their cosine similarity
between domains, routing entropy and expert coverage per domain, and the mutual information
between a token's top-1 expert and its domain. Across layers (§9.1): token clusters of the
concatenated routed softmax. The result is plain JSON (lists and floats).

Legend: T tokens, E routed experts of a layer, G documents, Y domains, C clusters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from emomoe.analyze import metrics
from emomoe.analyze.clusters import (
    ClusterConfig,
    cluster_domain_summary,
    cluster_tokens,
    first_token_cluster,
    top_cluster_share,
)
from emomoe.analyze.collect import Documents, RoutedLayer
from emomoe.analyze.pieces import Decoder, document_pieces, token_label

def layer_summary(routed: RoutedLayer, docs: Documents) -> dict[str, Any]:
    """The per-layer numbers: domain maps, similarities, coverage and top-1 expert information.

    Two domain vectors: top-k selections per token (rows sum to K) and the mean routed softmax
    (rows sum to 1). A small router's softmax can be nearly flat, so the paper's top-k frequency
    often shows more structure.
    """
    _, doc_T, _, domain_T = docs.token_arrays()
    num_docs, num_domains = len(docs.tokens), len(docs.domains)
    probs_GE, topk_freq_GE = metrics.document_vectors(routed.probs_TE, routed.experts_TK, doc_T, num_docs)
    doc_vectors = {"topk_freq": topk_freq_GE, "mean_prob": probs_GE}
    maps = {kind: metrics.group_means(v_GE, docs.domain_G, num_domains) for kind, v_GE in doc_vectors.items()}
    similarity = {kind: metrics.cosine_matrix(v_YE) for kind, v_YE in maps.items()}
    per_doc = {
        "entropy_bits": metrics.entropy_bits(probs_GE),
        "experts_above_uniform": metrics.experts_above_uniform(probs_GE),
        "distinct_experts": metrics.distinct_experts(topk_freq_GE),
    }
    top1_T = routed.probs_TE.argmax(axis=1)
    table_EY = metrics.contingency(top1_T, domain_T, routed.num_experts, num_domains)
    return {
        "layer": routed.layer,
        "num_experts": routed.num_experts,
        "top_k": routed.top_k,
        "maps": {kind: v_YE.tolist() for kind, v_YE in maps.items()},
        "similarity": {kind: s_YY.tolist() for kind, s_YY in similarity.items()},
        "mean_off_diagonal": {kind: metrics.mean_off_diagonal(s_YY) for kind, s_YY in similarity.items()},
        "per_domain": {
            name: metrics.group_means(v_G[:, None].astype(np.float64), docs.domain_G, num_domains)[:, 0].tolist()
            for name, v_G in per_doc.items()
        },
        "top1_domain_mi_bits": metrics.mutual_information_bits(table_EY),
        "top1_domain_nmi": metrics.normalized_mutual_information(table_EY),
    }


def cluster_summary(
    routed: list[RoutedLayer], docs: Documents, cfg: ClusterConfig, decoder: Decoder | None, num_top_tokens: int
) -> dict[str, Any]:
    """Token clusters over all MoE layers: the cluster x domain table, purity, NMI, top tokens,
    one example document per domain, and the first-token check."""
    token_T, doc_T, pos_T, domain_T = docs.token_arrays()
    features_TM = np.concatenate([r.probs_TE for r in routed], axis=1)
    labels_T, preprocessing = cluster_tokens(features_TM, cfg)
    k = cfg.num_clusters
    summary = cluster_domain_summary(labels_T, domain_T, k, len(docs.domains))
    sizes_C = np.bincount(labels_T, minlength=k)
    clusters = []
    for c in range(k):
        ids, counts = np.unique(token_T[labels_T == c], return_counts=True)
        top = np.argsort(-counts, kind="stable")[:num_top_tokens]
        clusters.append({
            "size": int(sizes_C[c]),
            "top_tokens": [[token_label(decoder, int(ids[i])), int(counts[i])] for i in top],
        })
    examples = {}
    for y, name in enumerate(docs.domains):
        g = int(np.flatnonzero(docs.domain_G == y)[0])
        examples[name] = {
            "pieces": document_pieces(decoder, docs.tokens[g].tolist()),
            "clusters": labels_T[doc_T == g].tolist(),
        }
    return {
        **preprocessing,
        "num_clusters": k,
        **summary,
        "clusters": clusters,
        "mean_top_cluster_share_per_doc": float(top_cluster_share(labels_T, doc_T, len(docs.tokens), k).mean()),
        "first_token": first_token_cluster(labels_T, pos_T),
        "examples": examples,
    }


def model_summary(
    routed: list[RoutedLayer], docs: Documents, cfg: ClusterConfig, decoder: Decoder | None, num_top_tokens: int
) -> dict[str, Any]:
    return {
        "layers": [layer_summary(r, docs) for r in routed],
        "clusters": cluster_summary(routed, docs, cfg, decoder, num_top_tokens),
    }


def headline(model: dict[str, Any]) -> dict[str, float]:
    """The numbers the README quotes: last-layer domain similarity (both vectors), NMI of the token
    clusters with the domains, and last-layer NMI of the top-1 expert with the domain."""
    last = model["layers"][-1]
    return {
        "last_layer_similarity_topk_freq": last["mean_off_diagonal"]["topk_freq"],
        "last_layer_similarity_mean_prob": last["mean_off_diagonal"]["mean_prob"],
        "cluster_domain_nmi": model["clusters"]["nmi"],
        "last_layer_top1_domain_nmi": last["top1_domain_nmi"],
    }
