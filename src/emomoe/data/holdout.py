"""Which documents are held out for validation: decided by a hash of the text, per domain.

A document goes to validation when its 64-bit blake2b hash falls below its domain's threshold.
The threshold is `val_fraction` of the hash range, raised where needed so that each domain has
at least `min(min_val_docs, num_docs // 2)` validation documents: small corpora still get a
validation set in every domain, and no domain loses more than half its documents to it.
The rule depends only on the texts, so it is deterministic, independent of input order, and
identical texts always land in the same split (duplicates never leak across the split).

Thresholds need every hash of a domain, so `CorpusScan` makes one streaming pass first; it keeps
only the `min_val_docs` smallest hashes per domain, plus counts and a fingerprint of the input.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections.abc import Iterable

from emomoe.data.readers import Document

_HASH_RANGE = 1 << 64


def text_hash(data: bytes, purpose: bytes = b"val") -> int:
    """64-bit hash of UTF-8 text; `purpose` salts it, so a tokenizer sample is not the val set."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=purpose).digest(), "little")


def hash_below(fraction: float) -> int:
    """Hashes strictly below this value make up `fraction` of the hash range."""
    return min(_HASH_RANGE, max(0, int(fraction * _HASH_RANGE)))


class Fingerprint:
    """Order-sensitive digest of a corpus: its domains and text hashes, document by document."""

    def __init__(self) -> None:
        self._digest = hashlib.blake2b(digest_size=16)

    def update(self, domain: str, h: int) -> None:
        self._digest.update(domain.encode("utf-8") + b"\0" + h.to_bytes(8, "little"))

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


@dataclasses.dataclass
class DomainScan:
    num_documents: int = 0
    num_bytes: int = 0
    smallest: list[int] = dataclasses.field(default_factory=list)  # max-heap of negated hashes


@dataclasses.dataclass
class CorpusScan:
    """Counts, byte sizes and the smallest hashes per domain from one pass over a corpus."""

    domains: dict[str, DomainScan]
    num_bytes: int
    fingerprint: str

    @classmethod
    def of(cls, documents: Iterable[Document], min_val_docs: int) -> CorpusScan:
        domains: dict[str, DomainScan] = {}
        fingerprint = Fingerprint()
        total = 0
        for doc in documents:
            data = doc["text"].encode("utf-8")
            h = text_hash(data)
            scan = domains.setdefault(doc["domain"], DomainScan())
            scan.num_documents += 1
            scan.num_bytes += len(data)
            total += len(data)
            if min_val_docs > 0:
                if len(scan.smallest) < min_val_docs:
                    heapq.heappush(scan.smallest, -h)
                elif h < -scan.smallest[0]:
                    heapq.heapreplace(scan.smallest, -h)
            fingerprint.update(doc["domain"], h)
        return cls(domains=dict(sorted(domains.items())), num_bytes=total, fingerprint=fingerprint.hexdigest())

    def val_thresholds(self, val_fraction: float, min_val_docs: int) -> dict[str, int]:
        """Per domain: a document is held out iff text_hash(text) < threshold."""
        out = {}
        for name, scan in self.domains.items():
            threshold = hash_below(val_fraction)
            wanted = min(min_val_docs, scan.num_documents // 2)
            if wanted > 0:
                kth_smallest = sorted(-h for h in scan.smallest)[wanted - 1]
                threshold = max(threshold, kth_smallest + 1)
            out[name] = threshold
        return out
