"""Token clustering of router activations (the paper's Fig. 5 and App. D).

Features: every layer's routed softmax, concatenated across MoE layers. Preprocessing: mean-centre
and PCA to 95% of the variance (scikit-learn's PCA centres the data itself), then L2-normalise the
rows. Clustering: spherical k-means, here scikit-learn's k-means on the unit rows with the
centroids re-normalised to unit length afterwards, and every token assigned to the centroid of
highest cosine similarity.

Legend: T tokens, M features (every MoE layer's routed softmax side by side), Z principal
components, C clusters, Y domains, G documents.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from emomoe.analyze.metrics import contingency, normalized_mutual_information, purity
from emomoe.config import Config, ranged
from emomoe.errors import ConfigError, EmomoeError


@dataclasses.dataclass
class ClusterConfig(Config):
    num_clusters: int = ranged(32, ge=2)
    """k of k-means (the paper's 32)."""
    variance: float = ranged(0.95, gt=0, le=1)
    """Share of the feature variance the PCA keeps."""
    num_inits: int = ranged(10, ge=1)
    """k-means restarts; the best (lowest inertia) wins."""
    max_iter: int = ranged(500, ge=1)
    """Iterations of one k-means run at most."""
    seed: int = 42
    """Seed of the PCA and of the k-means initialisations."""


def check_num_clusters(cfg: ClusterConfig, num_tokens: int) -> None:
    if cfg.num_clusters > num_tokens:
        raise ConfigError(
            f"num_clusters: k = {cfg.num_clusters} is more than the {num_tokens} tokens analysed; "
            "lower k or analyse more documents or tokens per document"
        )


def cluster_tokens(features_TM: np.ndarray, cfg: ClusterConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster ids of every row and facts about the preprocessing (PCA components, variance kept)."""
    try:
        from sklearn.cluster import KMeans
        from sklearn.decomposition import PCA
    except ImportError:
        raise EmomoeError("token clustering needs scikit-learn: pip install 'emomoe[analysis]'") from None
    check_num_clusters(cfg, len(features_TM))
    features_TM = np.asarray(features_TM, dtype=np.float32)  # T x M can be large; PCA and k-means keep float32
    if cfg.variance < 1.0:
        pca = PCA(n_components=cfg.variance, svd_solver="covariance_eigh", random_state=cfg.seed)
        x_TZ = pca.fit_transform(features_TM)
        kept = float(pca.explained_variance_ratio_.sum())
    else:
        x_TZ, kept = features_TM - features_TM.mean(axis=0), 1.0
    unit_TZ = _unit_rows(x_TZ)
    kmeans = KMeans(cfg.num_clusters, n_init=cfg.num_inits, max_iter=cfg.max_iter, random_state=cfg.seed)
    kmeans.fit(unit_TZ)
    centroids_CZ = _unit_rows(kmeans.cluster_centers_)
    labels_T = (unit_TZ @ centroids_CZ.T).argmax(axis=1)
    return labels_T, {"num_components": int(x_TZ.shape[1]), "variance_kept": kept}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def first_token_cluster(labels_T: np.ndarray, pos_T: np.ndarray) -> dict[str, Any]:
    """App. D's check: the cluster most first tokens of documents fall into, the share of first
    tokens it takes in, and how much of the cluster they make up (1.0: a cluster of its own)."""
    first_T = pos_T == 0
    first_labels = labels_T[first_T]
    cluster = int(np.bincount(first_labels).argmax())
    members = labels_T == cluster
    return {
        "cluster": cluster,
        "share_of_first_tokens": float((first_labels == cluster).mean()),
        "first_token_share_of_cluster": float(first_T[members].mean()),
    }


def top_cluster_share(labels_T: np.ndarray, doc_T: np.ndarray, num_docs: int, num_clusters: int) -> np.ndarray:
    """Per document: the share of its tokens in its most common cluster (topic-like clusters
    keep a document together, syntax-like clusters split it up)."""
    counts_GC = contingency(doc_T, labels_T, num_docs, num_clusters)
    return counts_GC.max(axis=1) / np.maximum(counts_GC.sum(axis=1), 1)


def cluster_domain_summary(
    labels_T: np.ndarray, domain_T: np.ndarray, num_clusters: int, num_domains: int
) -> dict[str, Any]:
    """The cluster x domain table with its purity and NMI(cluster; domain)."""
    table_CY = contingency(labels_T, domain_T, num_clusters, num_domains)
    return {
        "table": table_CY.tolist(),
        "purity": purity(table_CY),
        "nmi": normalized_mutual_information(table_CY),
    }
