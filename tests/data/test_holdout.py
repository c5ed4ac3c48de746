from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from emomoe.data.holdout import CorpusScan, hash_below, text_hash


def _val_set_reference(docs, val_fraction: float, min_val_docs: int) -> set[tuple[str, str]]:
    """Obviously correct: per domain, hashes below the fraction plus the k smallest (k <= n // 2)."""
    held = set()
    for domain in {d for _, d in docs}:
        texts = [t for t, d in docs if d == domain]
        hashes = sorted(text_hash(t.encode()) for t in texts)
        k = min(min_val_docs, len(texts) // 2)
        kth = hashes[k - 1] if k else -1
        for t in texts:
            h = text_hash(t.encode())
            if h < val_fraction * 2**64 or h <= kth:
                held.add((t, domain))
    return held


def _val_set(docs, val_fraction: float, min_val_docs: int) -> set[tuple[str, str]]:
    scan = CorpusScan.of(({"text": t, "domain": d, "source": ""} for t, d in docs), min_val_docs)
    thresholds = scan.val_thresholds(val_fraction, min_val_docs)
    return {(t, d) for t, d in docs if text_hash(t.encode()) < thresholds[d]}


docs_strategy = st.lists(
    st.tuples(st.text(min_size=1, max_size=12), st.sampled_from(["a", "b", "c"])), min_size=1, max_size=60, unique=True
)


@settings(max_examples=60, deadline=None)
@given(docs=docs_strategy, val_fraction=st.sampled_from([0.0, 0.02, 0.3, 0.9]), min_val_docs=st.integers(0, 6))
def test_val_set_matches_reference(docs, val_fraction: float, min_val_docs: int) -> None:
    assert _val_set(docs, val_fraction, min_val_docs) == _val_set_reference(docs, val_fraction, min_val_docs)


@settings(max_examples=30, deadline=None)
@given(docs=docs_strategy, min_val_docs=st.integers(1, 6))
def test_every_domain_gets_its_minimum_and_keeps_half(docs, min_val_docs: int) -> None:
    held = _val_set(docs, 0.0, min_val_docs)
    for domain in {d for _, d in docs}:
        n = sum(1 for _, d in docs if d == domain)
        num_val = sum(1 for _, d in held if d == domain)
        assert num_val == min(min_val_docs, n // 2)


def test_split_ignores_input_order() -> None:
    docs = [(f"document {i}", "abc"[i % 3]) for i in range(200)]
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    assert _val_set(docs, 0.05, 3) == _val_set(shuffled, 0.05, 3)
    scans = [CorpusScan.of(({"text": t, "domain": d, "source": ""} for t, d in x), 3) for x in (docs, shuffled)]
    assert scans[0].val_thresholds(0.05, 3) == scans[1].val_thresholds(0.05, 3)
    assert scans[0].fingerprint != scans[1].fingerprint  # the fingerprint does see order (resume must)


def test_fraction_is_roughly_respected_on_large_domains() -> None:
    docs = [(f"doc number {i}", "a") for i in range(5000)]
    assert 0.08 * 5000 < len(_val_set(docs, 0.1, 2)) < 0.12 * 5000


def test_hash_purposes_are_independent() -> None:
    data = [f"t{i}".encode() for i in range(2000)]
    val = {d for d in data if text_hash(d) < hash_below(0.5)}
    sample = {d for d in data if text_hash(d, b"sample") < hash_below(0.5)}
    assert 0.4 < len(val & sample) / len(val) < 0.6


def test_scan_counts() -> None:
    docs = [{"text": "ab", "domain": "x", "source": ""}, {"text": "ü", "domain": "y", "source": ""}]
    scan = CorpusScan.of(docs, 1)
    assert list(scan.domains) == ["x", "y"]
    assert scan.num_bytes == 4
    assert [s.num_documents for s in scan.domains.values()] == [1, 1]
