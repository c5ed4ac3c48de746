import math

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score, normalized_mutual_info_score

from emomoe.analyze import metrics as m


def test_entropy_bits_by_hand():
    got = m.entropy_bits(np.array([[1, 1, 1, 1], [1, 0, 0, 0], [0.5, 0.25, 0.25, 0], [2, 2, 0, 0]]))
    assert got == pytest.approx([2.0, 0.0, 1.5, 1.0])
    assert m.entropy_bits(np.zeros(3)) == 0.0


def test_contingency_counts_pairs():
    table = m.contingency(np.array([0, 0, 1, 2]), np.array([1, 1, 0, 1]), 3, 2)
    assert table.tolist() == [[0, 2], [1, 0], [0, 1]]


def test_mutual_information_by_hand():
    assert m.mutual_information_bits(np.array([[1, 0], [0, 1]])) == pytest.approx(1.0)
    assert m.mutual_information_bits(np.array([[1, 1], [1, 1]])) == pytest.approx(0.0)
    # joint [[.5, 0], [.25, .25]], marginals A (.5, .5), B (.75, .25):
    # .5 log2(4/3) + .25 log2(2/3) + .25 log2(2) = 0.311278
    table = np.array([[2, 0], [1, 1]])
    assert m.mutual_information_bits(table) == pytest.approx(0.3112781, abs=1e-6)
    # H(A) = 1, H(B) = 0.811278 -> NMI = 0.311278 / 0.905639
    assert m.normalized_mutual_information(table) == pytest.approx(0.3437110, abs=1e-6)
    assert m.normalized_mutual_information(np.array([[5]])) == 0.0


def test_mutual_information_matches_scikit_learn_on_labels():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 400)
    b = (a + rng.integers(0, 3, 400)) % 4
    table = m.contingency(a, b, 5, 4)
    assert m.mutual_information_bits(table) == pytest.approx(mutual_info_score(a, b) / math.log(2))
    assert m.normalized_mutual_information(table) == pytest.approx(normalized_mutual_info_score(a, b))


def test_cosine_matrix_and_mean_off_diagonal_by_hand():
    sim = m.cosine_matrix(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [0.0, 0.0]]))
    r = 1 / math.sqrt(2)
    assert sim[:3, :3] == pytest.approx(np.array([[1, r, 0], [r, 1, r], [0, r, 1]]))
    assert np.all(sim[3] == 0)
    assert m.mean_off_diagonal(sim[:3, :3]) == pytest.approx(4 * r / 6)
    assert math.isnan(m.mean_off_diagonal(np.ones((1, 1))))


def test_purity_by_hand():
    assert m.purity(np.array([[3, 1], [0, 2]])) == pytest.approx(5 / 6)
    assert m.purity(np.array([[1, 1, 1]])) == pytest.approx(1 / 3)


def test_jaccard_by_hand():
    assert m.jaccard([1, 2, 3], [2, 3, 4]) == 0.5
    assert m.jaccard([], []) == 1.0
    assert m.jaccard([1], [2]) == 0.0
    assert m.jaccard_matrix([[1, 2], [2, 3], [1, 2]]).tolist() == [[1, 1 / 3, 1], [1 / 3, 1, 1 / 3], [1, 1 / 3, 1]]


def test_expected_random_jaccard_by_hand():
    # 2 of 4: overlap 0, 1, 2 with probability 1/6, 4/6, 1/6 -> J 0, 1/3, 1 -> 7/18
    assert m.expected_random_jaccard(2, 4) == pytest.approx(7 / 18)
    assert m.expected_random_jaccard(1, 4) == pytest.approx(1 / 4)
    assert m.expected_random_jaccard(4, 4) == pytest.approx(1.0)


def test_expected_random_jaccard_matches_sampling():
    rng = np.random.default_rng(0)
    draws = [m.jaccard(rng.choice(31, 8, replace=False), rng.choice(31, 8, replace=False)) for _ in range(20000)]
    assert m.expected_random_jaccard(8, 31) == pytest.approx(np.mean(draws), abs=0.005)


def test_document_vectors_by_hand():
    probs_TE = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.2, 0.2, 0.6]])
    experts_TK = np.array([[0, 1], [2, 0], [2, 1]])
    probs_GE, freq_GE = m.document_vectors(probs_TE, experts_TK, np.array([0, 0, 1]), 2)
    assert probs_GE == pytest.approx(np.array([[0.3, 0.2, 0.5], [0.2, 0.2, 0.6]]))
    assert freq_GE == pytest.approx(np.array([[1.0, 0.5, 0.5], [0.0, 1.0, 1.0]]))
    assert freq_GE.sum(axis=1) == pytest.approx([2, 2])


def test_group_means_by_hand():
    v_GE = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    assert m.group_means(v_GE, np.array([0, 0, 2]), 3).tolist() == [[2.0, 1.0], [0.0, 0.0], [5.0, 5.0]]


def test_coverage_counts_by_hand():
    assert m.experts_above_uniform(np.array([[0.3, 0.2, 0.5], [0.4, 0.4, 0.2]])).tolist() == [1, 2]
    assert m.distinct_experts(np.array([[1.0, 0.5, 0.5], [0.0, 1.0, 1.0]])).tolist() == [3, 2]


def test_expert_order_groups_experts_by_favourite_domain():
    # shares per expert: e0 (.9, .1), e1 (.1, .9), e2 (.5, .5) -> domain 0 on a tie, e3 (0, 1)
    v_YE = np.array([[0.9, 0.1, 0.5, 0.0], [0.1, 0.9, 0.5, 0.2]])
    assert m.expert_order(v_YE).tolist() == [0, 2, 3, 1]
