"""Rebuild tests/assets/store: a small real-text token store for golden losses and bench/crash.py.

Three domains of the embedded corpus, the first 24 documents of each cut to 3,000 characters, a
512-entry byte-level BPE. The store is shipped (about 200 kB) so that tests do not depend on the
tokenizer trainer giving identical merges across `tokenizers` versions. Rebuild it on purpose
only, and re-pin the golden losses after (see tests/train/test_golden.py):

    .venv/bin/python tests/assets/make_store.py
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

from emomoe.data.corpus import embedded_corpus
from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import train_tokenizer

STORE = Path(__file__).resolve().parent / "store"
DOMAINS = ("code", "legal", "literature")
DOCS_PER_DOMAIN = 24
MAX_CHARS = 3000
VOCAB_SIZE = 512


def documents() -> list[dict[str, str]]:
    chosen = []
    for domain in DOMAINS:
        docs = (d for d in embedded_corpus() if d["domain"] == domain)
        chosen += [{**d, "text": d["text"][:MAX_CHARS]} for d in itertools.islice(docs, DOCS_PER_DOMAIN)]
    return chosen


def main() -> None:
    docs = documents()
    tokenizer = train_tokenizer((d["text"] for d in docs), VOCAB_SIZE)
    shutil.rmtree(STORE, ignore_errors=True)
    store = tokenize_corpus(docs, tokenizer, STORE, val_fraction=0.15, min_val_docs=3, progress=False)
    print(store.summary())


if __name__ == "__main__":
    main()
