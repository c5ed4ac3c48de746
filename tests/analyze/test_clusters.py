import numpy as np
import pytest

from emomoe.analyze.clusters import (
    ClusterConfig,
    cluster_domain_summary,
    cluster_tokens,
    first_token_cluster,
    top_cluster_share,
)
from emomoe.errors import ConfigError


def _directions(num_per_group: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three groups of rows along directions 120 degrees apart, every group with the same spread of
    lengths (0.2 to 5, so the data stays centred): only the direction, which spherical k-means looks
    at, tells the groups apart; plain k-means would split them by length."""
    rng = np.random.default_rng(seed)
    r = np.sqrt(3) / 2
    centres = np.array([[1.0, 0, 0, 0], [-0.5, r, 0, 0], [-0.5, -r, 0, 0]])
    truth = np.repeat(np.arange(3), num_per_group)
    scale = np.tile(rng.uniform(0.2, 5.0, num_per_group), 3)[:, None]
    rows = (centres[truth] + rng.normal(0, 0.03, (len(truth), 4))) * scale
    return rows, truth


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_spherical_kmeans_groups_by_direction_not_length():
    rows, truth = _directions(40)
    labels, info = cluster_tokens(rows, ClusterConfig(num_clusters=3))
    assert _same_partition(labels, truth)
    assert info["num_components"] == 2 and info["variance_kept"] >= 0.95


def test_clustering_is_seeded():
    rows, _ = _directions(30, seed=1)
    rows = rows + np.random.default_rng(2).normal(0, 1.0, rows.shape)  # overlapping groups: restarts matter
    cfg = ClusterConfig(num_clusters=5, num_inits=2, seed=7)
    assert (cluster_tokens(rows, cfg)[0] == cluster_tokens(rows, cfg)[0]).all()


def test_more_clusters_than_tokens_is_refused():
    rows, _ = _directions(2)
    with pytest.raises(ConfigError, match="k = 7 is more than the 6 tokens"):
        cluster_tokens(rows, ClusterConfig(num_clusters=7))


def test_cluster_config_is_validated():
    with pytest.raises(ConfigError, match="variance"):
        ClusterConfig.from_dict({"variance": 1.5})
    with pytest.raises(ConfigError, match="num_clusters"):
        ClusterConfig.from_dict({"num_clusters": 1})


def test_first_token_cluster_by_hand():
    # documents of 3, 2 and 3 tokens; first tokens in clusters 2, 2, 0; cluster 2 also holds one later token
    labels = np.array([2, 1, 1, 2, 2, 0, 1, 1])
    pos = np.array([0, 1, 2, 0, 1, 0, 1, 2])
    got = first_token_cluster(labels, pos)
    assert got == {"cluster": 2, "share_of_first_tokens": pytest.approx(2 / 3),
                   "first_token_share_of_cluster": pytest.approx(2 / 3)}


def test_top_cluster_share_by_hand():
    labels = np.array([0, 0, 1, 2, 2, 2, 1])
    docs = np.array([0, 0, 0, 1, 1, 1, 1])
    assert top_cluster_share(labels, docs, 2, 3).tolist() == pytest.approx([2 / 3, 3 / 4])


def test_cluster_domain_summary_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 1])
    domains = np.array([0, 0, 1, 1, 1, 1])
    got = cluster_domain_summary(labels, domains, 2, 2)
    assert got["table"] == [[2, 1], [0, 3]]
    assert got["purity"] == pytest.approx(5 / 6)
    # H(cluster) = 1, H(domain) = H(1/3, 2/3) = 0.918296, I = H(domain) - H(domain | cluster) = 0.918296 - 0.459148
    assert got["nmi"] == pytest.approx(0.459148 / 0.959148, abs=1e-5)
