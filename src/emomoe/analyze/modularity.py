"""Every number of one model's modularity analysis, from the routing its collection pass kept.

Per MoE layer (§9.2 of the spec), on whole documents (the paper's Fig. 6 pools documents of
32-2048 tokens): domain x expert maps of the mean routed probability and of the top-k frequency
(a domain's vector is the mean of its documents' vectors), their cosine similarity between
domains, routing entropy and expert coverage per domain, and the mutual information between a
token's top-1 expert and its domain; the same similarity on the document prefixes, for
comparison. Across layers (§9.1), on the prefixes: token clusters of the concatenated routed
softmax. The result is plain JSON (lists and floats).

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


def layer_summary(routed: RoutedLayer, docs: Documents, prefix: Documents) -> dict[str, Any]:
    """The per-layer numbers: domain maps, similarities, coverage and top-1 expert information on
    whole documents (`docs`), and the domain similarity on their prefixes (`prefix`).

    Two domain vectors: top-k selections per token (rows sum to K) and the mean routed softmax
    (rows sum to 1). A small router's softmax can be nearly flat, so the paper's top-k frequency
    often shows more structure.
    """
    num_domains = len(docs.domains)
    doc_vectors = {"topk_freq": routed.doc_topk_freq_GE, "mean_prob": routed.doc_probs_GE}
    maps = {kind: metrics.group_means(v_GE, docs.domain_G, num_domains) for kind, v_GE in doc_vectors.items()}
    similarity = {kind: metrics.cosine_matrix(v_YE) for kind, v_YE in maps.items()}
    _, prefix_doc_T, _, _ = prefix.token_arrays()
    prefix_probs_GE, prefix_topk_freq_GE = metrics.document_vectors(
        routed.prefix_probs_TE, routed.prefix_experts_TK, prefix_doc_T, len(prefix.tokens)
    )
    prefix_vectors = {"topk_freq": prefix_topk_freq_GE, "mean_prob": prefix_probs_GE}
    prefix_similarity = {
        kind: metrics.cosine_matrix(metrics.group_means(v_GE, prefix.domain_G, num_domains))
        for kind, v_GE in prefix_vectors.items()
    }
    per_doc = {
        "entropy_bits": metrics.entropy_bits(routed.doc_probs_GE),
        "experts_above_uniform": metrics.experts_above_uniform(routed.doc_probs_GE),
        "distinct_experts": metrics.distinct_experts(routed.doc_topk_freq_GE),
    }
    table_EY = metrics.group_sums(routed.doc_top1_GE, docs.domain_G, num_domains).T
    return {
        "layer": routed.layer,
        "num_experts": routed.num_experts,
        "top_k": routed.top_k,
        "maps": {kind: v_YE.tolist() for kind, v_YE in maps.items()},
        "similarity": {kind: s_YY.tolist() for kind, s_YY in similarity.items()},
        "mean_off_diagonal": {kind: metrics.mean_off_diagonal(s_YY) for kind, s_YY in similarity.items()},
        "prefix_similarity": {kind: s_YY.tolist() for kind, s_YY in prefix_similarity.items()},
        "prefix_mean_off_diagonal": {kind: metrics.mean_off_diagonal(s_YY) for kind, s_YY in prefix_similarity.items()},
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
    """Token clusters over all MoE layers of the prefix tokens (`docs` are the prefixes): the
    cluster x domain table, purity, NMI, top tokens, one example document per domain, and the
    first-token check."""
    token_T, doc_T, pos_T, domain_T = docs.token_arrays()
    features_TM = np.concatenate([r.prefix_probs_TE for r in routed], axis=1)
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
    routed: list[RoutedLayer],
    docs: Documents,
    prefix: Documents,
    cfg: ClusterConfig,
    decoder: Decoder | None,
    num_top_tokens: int,
) -> dict[str, Any]:
    return {
        "layers": [layer_summary(r, docs, prefix) for r in routed],
        "clusters": cluster_summary(routed, prefix, cfg, decoder, num_top_tokens),
    }


def headline(model: dict[str, Any]) -> dict[str, float]:
    """The numbers the README quotes: last-layer domain similarity (both vectors on whole documents,
    top-k frequency on the prefixes), NMI of the token clusters with the domains, and last-layer NMI
    of the top-1 expert with the domain."""
    last = model["layers"][-1]
    return {
        "last_layer_similarity_topk_freq": last["mean_off_diagonal"]["topk_freq"],
        "last_layer_similarity_mean_prob": last["mean_off_diagonal"]["mean_prob"],
        "last_layer_prefix_similarity_topk_freq": last["prefix_mean_off_diagonal"]["topk_freq"],
        "cluster_domain_nmi": model["clusters"]["nmi"],
        "last_layer_top1_domain_nmi": last["top1_domain_nmi"],
    }
