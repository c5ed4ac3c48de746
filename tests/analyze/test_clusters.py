import numpy as np
import pytest

from emomoe.analyze.clusters import (
    ClusterConfig,
    cluster_domain_summary,
    cluster_tokens,
    first_token_cluster,
    spherical_refine,
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


def _slow_spherical_kmeans(unit_TZ, centroids_CZ, max_passes, tol=1e-6):
    """The paper's refinement written out row by row: normalise the centroids, assign every row to the
    centroid of highest cosine, move each centroid to its rows' normalised mean (or leave it without
    rows), stop once no coordinate moved more than `tol`."""
    centroids = [c / np.linalg.norm(c) for c in np.asarray(centroids_CZ, dtype=np.float64)]
    passes = 0
    for _ in range(max_passes):
        passes += 1
        labels = [max(range(len(centroids)), key=lambda c: float(row @ centroids[c])) for row in unit_TZ]
        moved = []
        for c, old in enumerate(centroids):
            members = [row for row, label in zip(unit_TZ, labels) if label == c]
            if members:
                mean = np.mean(members, axis=0)
                moved.append(mean / np.linalg.norm(mean))
            else:
                moved.append(old)
        shift = max(float(np.max(np.abs(new - old))) for new, old in zip(moved, centroids))
        centroids = moved
        if shift < tol:
            break
    labels = [max(range(len(centroids)), key=lambda c: float(row @ centroids[c])) for row in unit_TZ]
    return np.array(labels), passes


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("max_passes", [1, 3, 20])
def test_spherical_refinement_matches_a_slow_loop(max_passes):
    rng = np.random.default_rng(5)
    unit_TZ = _unit(rng.normal(size=(240, 5)))
    start_CZ = rng.normal(size=(6, 5)) * rng.uniform(0.1, 2.0, (6, 1))  # unnormalised, like k-means centroids
    labels, passes, settled = spherical_refine(unit_TZ, start_CZ, max_passes)
    want_labels, want_passes = _slow_spherical_kmeans(unit_TZ, start_CZ, max_passes)
    assert (labels == want_labels).all() and passes == want_passes
    assert settled == (max_passes == 20)  # this start needs more than 3 passes and fewer than 20


def _spread_and_tight(seed: int = 0) -> np.ndarray:
    """A tight bundle of directions beside a wide fan of them: k-means centroids of unit rows have
    unequal lengths here, so normalising them once moves the boundary and leaves rows on the wrong
    side of it."""
    rng = np.random.default_rng(seed)
    tight = np.array([1.0, 0.3, 0.0]) + rng.normal(0, 0.05, (150, 3))
    wide = np.array([0.2, 1.0, 0.0]) + rng.normal(0, 1.2, (150, 3))
    return np.concatenate([tight, wide])


def test_clusters_are_what_the_papers_pipeline_gives():
    """Mini-batch k-means with the paper's settings, then the slow refinement: the same clusters."""
    from sklearn.cluster import MiniBatchKMeans

    rows = _spread_and_tight()
    cfg = ClusterConfig(num_clusters=4, variance=1.0)
    labels, info = cluster_tokens(rows, cfg)
    unit_TZ = _unit(rows - rows.mean(axis=0))
    kmeans = MiniBatchKMeans(4, n_init=10, max_iter=500, batch_size=4096, random_state=42).fit(unit_TZ)
    want, passes = _slow_spherical_kmeans(unit_TZ, kmeans.cluster_centers_, 20)
    assert (labels == want).all() and info["refine_passes"] == passes > 1


def test_every_token_sits_with_the_nearest_normalised_mean_of_its_cluster():
    """The fixed point of spherical k-means, checked directly: no token is closer (in cosine) to
    another cluster's normalised mean than to its own."""
    rows = _spread_and_tight()
    labels, info = cluster_tokens(rows, ClusterConfig(num_clusters=3, variance=1.0))
    assert info["refine_settled"]
    unit_TZ = _unit(rows - rows.mean(axis=0))
    means_CZ = _unit(np.stack([unit_TZ[labels == c].mean(axis=0) for c in range(3)]))
    assert ((unit_TZ @ means_CZ.T).argmax(axis=1) == labels).all()
