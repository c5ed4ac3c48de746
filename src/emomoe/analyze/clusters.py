"""Token clustering of router activations (the paper's Fig. 5 and App. D).

Features: every layer's routed softmax, concatenated across MoE layers. Preprocessing: mean-centre
and PCA to 95% of the variance (scikit-learn's PCA centres the data itself), then L2-normalise the
rows. Clustering: spherical k-means as the paper's `cluster.py` computes it: scikit-learn's
mini-batch k-means on the unit rows (its settings), then passes of spherical k-means from those
centroids: centroids normalised to unit length, every token assigned to the centroid of highest
cosine similarity, each centroid replaced by its tokens' normalised mean, until the centroids move
less than `REFINE_TOLERANCE` or after `refine_passes` passes.

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
    """k-means initialisations tried; the best (lowest inertia) is run."""
    max_iter: int = ranged(500, ge=1)
    """Passes over the tokens of the mini-batch k-means at most."""
    batch_size: int = ranged(4096, ge=1)
    """Tokens per mini-batch of k-means (the paper's 4096)."""
    refine_passes: int = ranged(20, ge=0)
    """Spherical k-means passes after the mini-batch k-means at most (the paper's 20)."""
    seed: int = 42
    """Seed of the PCA and of the k-means initialisations."""


def check_num_clusters(cfg: ClusterConfig, num_tokens: int) -> None:
    if cfg.num_clusters > num_tokens:
        raise ConfigError(
            f"num_clusters: k = {cfg.num_clusters} is more than the {num_tokens} tokens analysed; "
            "lower k or analyse more documents or tokens per document"
        )


def cluster_tokens(features_TM: np.ndarray, cfg: ClusterConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster ids of every row and facts about the preprocessing (PCA components, variance kept)
    and the spherical refinement (passes run, whether the centroids settled)."""
    try:
        from sklearn.cluster import MiniBatchKMeans
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
    kmeans = MiniBatchKMeans(
        cfg.num_clusters, n_init=cfg.num_inits, max_iter=cfg.max_iter, batch_size=cfg.batch_size,
        random_state=cfg.seed,
    )
    kmeans.fit(unit_TZ)
    labels_T, passes, settled = spherical_refine(unit_TZ, kmeans.cluster_centers_, cfg.refine_passes)
    return labels_T, {
        "num_components": int(x_TZ.shape[1]), "variance_kept": kept, "refine_passes": passes, "refine_settled": settled
    }


REFINE_TOLERANCE = 1e-6
"""The refinement stops once no centroid coordinate moves more than this (the paper's value)."""


def spherical_refine(unit_TZ: np.ndarray, centroids_CZ: np.ndarray, max_passes: int) -> tuple[np.ndarray, int, bool]:
    """Spherical k-means from `centroids_CZ` on unit rows: the cluster of every row, the passes run
    and whether the centroids settled. A cluster left without rows keeps its centroid."""
    centroids_CZ = _unit_rows(np.asarray(centroids_CZ, dtype=unit_TZ.dtype))
    for done in range(1, max_passes + 1):
        labels_T = (unit_TZ @ centroids_CZ.T).argmax(axis=1)
        sums_CZ = np.zeros_like(centroids_CZ)
        np.add.at(sums_CZ, labels_T, unit_TZ)
        # the normalised mean is the normalised sum
        has_rows_C1 = np.bincount(labels_T, minlength=len(centroids_CZ))[:, None] > 0
        moved_CZ = np.where(has_rows_C1, _unit_rows(sums_CZ), centroids_CZ)
        shift = float(np.abs(moved_CZ - centroids_CZ).max())
        centroids_CZ = moved_CZ
        if shift < REFINE_TOLERANCE:
            return (unit_TZ @ centroids_CZ.T).argmax(axis=1), done, True
    return (unit_TZ @ centroids_CZ.T).argmax(axis=1), max_passes, False


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
