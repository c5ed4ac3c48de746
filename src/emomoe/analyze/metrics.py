"""Modularity metrics: pure functions on routing arrays, each tested against hand-computed values.

Legend: T tokens, E routed experts of one layer, K experts per token, G documents, Y domains,
C clusters, I first variable of a contingency table (`a`), J second variable (`b`), X any leading
dims. Information is in bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def entropy_bits(p_XE: np.ndarray) -> np.ndarray:
    """Shannon entropy (bits) of every row, each row normalised to sum 1 first (0 log 0 = 0)."""
    p_XE = np.asarray(p_XE, dtype=np.float64)
    totals_X1 = p_XE.sum(axis=-1, keepdims=True)
    q_XE = np.divide(p_XE, totals_X1, out=np.zeros_like(p_XE), where=totals_X1 > 0)
    logs_XE = np.log2(q_XE, out=np.zeros_like(q_XE), where=q_XE > 0)
    return -(q_XE * logs_XE).sum(axis=-1)


def contingency(a_T: np.ndarray, b_T: np.ndarray, num_a: int, num_b: int) -> np.ndarray:
    """Counts of every (a, b) pair: an [num_a, num_b] table of int64."""
    counts_IJ = np.zeros((num_a, num_b), dtype=np.int64)
    np.add.at(counts_IJ, (np.asarray(a_T), np.asarray(b_T)), 1)
    return counts_IJ


def mutual_information_bits(counts_IJ: np.ndarray) -> float:
    """I(A; B) in bits of the joint distribution given by a contingency table."""
    joint_IJ = np.asarray(counts_IJ, dtype=np.float64)
    joint_IJ = joint_IJ / joint_IJ.sum()
    outer_IJ = joint_IJ.sum(axis=1, keepdims=True) * joint_IJ.sum(axis=0, keepdims=True)
    nonzero = joint_IJ > 0
    return float((joint_IJ[nonzero] * np.log2(joint_IJ[nonzero] / outer_IJ[nonzero])).sum())


def normalized_mutual_information(counts_IJ: np.ndarray) -> float:
    """I(A; B) / mean(H(A), H(B)) (the arithmetic normalisation, scikit-learn's default); 0 when
    both variables are constant."""
    counts_IJ = np.asarray(counts_IJ)
    h_a = float(entropy_bits(counts_IJ.sum(axis=1)))
    h_b = float(entropy_bits(counts_IJ.sum(axis=0)))
    mean_h = (h_a + h_b) / 2
    return mutual_information_bits(counts_IJ) / mean_h if mean_h > 0 else 0.0


def cosine_matrix(v_YE: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows ([Y, Y]); a zero row is similar to nothing (0)."""
    v_YE = np.asarray(v_YE, dtype=np.float64)
    norms_Y1 = np.linalg.norm(v_YE, axis=1, keepdims=True)
    unit_YE = np.divide(v_YE, norms_Y1, out=np.zeros_like(v_YE), where=norms_Y1 > 0)
    return unit_YE @ unit_YE.T


def mean_off_diagonal(m_YY: np.ndarray) -> float:
    """Mean of the entries off the diagonal of a square matrix (nan for a 1x1 matrix)."""
    m_YY = np.asarray(m_YY, dtype=np.float64)
    n = m_YY.shape[0]
    if n < 2:
        return math.nan
    return float((m_YY.sum() - np.trace(m_YY)) / (n * n - n))


def purity(counts_CY: np.ndarray) -> float:
    """Share of tokens whose cluster's most common label is their own label."""
    counts_CY = np.asarray(counts_CY)
    return float(counts_CY.max(axis=1).sum() / counts_CY.sum())


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|a ∩ b| / |a ∪ b| of two sets (1 for two empty sets: they are the same)."""
    a, b = set(a), set(b)
    union = a | b
    return len(a & b) / len(union) if union else 1.0


def jaccard_matrix(sets: Sequence[Sequence[int]]) -> np.ndarray:
    return np.array([[jaccard(a, b) for b in sets] for a in sets])


def expected_random_jaccard(num_kept: int, num_experts: int) -> float:
    """Expected Jaccard overlap of two independent uniformly random `num_kept`-subsets of
    `num_experts` items: the baseline a domain-specific selection is compared with.

    The intersection size i is hypergeometric; the union is then 2n - i.
    """
    n, e = num_kept, num_experts
    if n == 0:
        return 1.0
    total = math.comb(e, n)
    expected = 0.0
    for i in range(max(0, 2 * n - e), n + 1):
        p = math.comb(n, i) * math.comb(e - n, n - i) / total
        expected += p * i / (2 * n - i)
    return expected


def document_sums(
    probs_TE: np.ndarray, experts_TK: np.ndarray, doc_T: np.ndarray, num_docs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per document: the summed routed probability of every expert, and how many times each expert
    was among a token's top-k."""
    num_experts = probs_TE.shape[1]
    probs_GE = np.zeros((num_docs, num_experts))
    np.add.at(probs_GE, doc_T, probs_TE.astype(np.float64))
    picks_GE = np.zeros((num_docs, num_experts))
    np.add.at(picks_GE, (np.repeat(doc_T, experts_TK.shape[1]), experts_TK.reshape(-1)), 1.0)
    return probs_GE, picks_GE


def document_vectors(
    probs_TE: np.ndarray, experts_TK: np.ndarray, doc_T: np.ndarray, num_docs: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per document: the mean routed probability of every expert (rows sum to 1), and the number
    of top-k selections of every expert per token (rows sum to K), as in the paper's Fig. 6."""
    probs_GE, picks_GE = document_sums(probs_TE, experts_TK, doc_T, num_docs)
    lengths_G1 = np.maximum(np.bincount(doc_T, minlength=num_docs), 1)[:, None].astype(np.float64)
    return probs_GE / lengths_G1, picks_GE / lengths_G1


def group_sums(v_GE: np.ndarray, group_G: np.ndarray, num_groups: int) -> np.ndarray:
    """Sum of the rows of every group ([num_groups, E])."""
    sums_YE = np.zeros((num_groups, v_GE.shape[1]))
    np.add.at(sums_YE, group_G, v_GE)
    return sums_YE


def group_means(v_GE: np.ndarray, group_G: np.ndarray, num_groups: int) -> np.ndarray:
    """Mean row of every group ([num_groups, E]); an empty group's row is all zeros."""
    sums_YE = group_sums(v_GE, group_G, num_groups)
    counts_Y1 = np.bincount(group_G, minlength=num_groups)[:, None]
    return sums_YE / np.maximum(counts_Y1, 1)


def experts_above_uniform(probs_GE: np.ndarray) -> np.ndarray:
    """Per row: how many experts get more than the uniform weight 1/E."""
    return (np.asarray(probs_GE) > 1.0 / probs_GE.shape[1]).sum(axis=1)


def distinct_experts(topk_freq_GE: np.ndarray) -> np.ndarray:
    """Per row: how many experts were picked at least once."""
    return (np.asarray(topk_freq_GE) > 0).sum(axis=1)


def expert_order(v_YE: np.ndarray) -> np.ndarray:
    """A column order that shows the block structure of a domain x expert map: experts grouped by
    the domain they serve most (domains in row order), the most specialised first in each group."""
    v_YE = np.asarray(v_YE, dtype=np.float64)
    totals_E = v_YE.sum(axis=0)
    share_YE = np.divide(v_YE, totals_E, out=np.zeros_like(v_YE), where=totals_E > 0)
    favourite_E = share_YE.argmax(axis=0)
    return np.lexsort((-share_YE.max(axis=0), favourite_E))
