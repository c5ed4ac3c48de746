"""Fixture corpora made by the tests: a few kB of text in four domains, German and Chinese included."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from emomoe.data.store import TokenStore
from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import TextTokenizer, train_tokenizer

_WORDS = {
    "code": "def return self import class for in if else while yield lambda None True x y z = ( ) : + *".split(),
    "legal": "licensee shall grant warranty permission notice copyright software liability hereby".split(),
    "german": "die Straße ist groß und schön über Bäume Mädchen fährt Größe außerdem Übung".split(),
    "chinese": list("你好世界这是一个文档我们的中文数据模型专家路由训练"),
}


def make_documents(num_per_domain: int = 16, seed: int = 0) -> list[dict[str, str]]:
    """Deterministic documents of 20-80 words, domains interleaved as a real input would be."""
    rng = random.Random(seed)
    docs = []
    for i in range(num_per_domain):
        for domain, words in _WORDS.items():
            sep = "" if domain == "chinese" else " "
            text = sep.join(rng.choice(words) for _ in range(rng.randint(20, 80)))
            docs.append({"text": f"{domain} {i}: {text}", "domain": domain, "source": "fixture"})
    # Special-token text inside a document must stay text, not end the document.
    docs.append({"text": "print('<|endoftext|>')  # not a boundary", "domain": "code", "source": "fixture"})
    return docs


def write_jsonl(path: Path, docs: list[dict], **extra_fields: str) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps({**doc, **extra_fields}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(name="make_documents", scope="session")
def make_documents_fixture():
    return make_documents


@pytest.fixture(name="write_jsonl", scope="session")
def write_jsonl_fixture():
    return write_jsonl


@pytest.fixture(scope="session")
def corpus_docs() -> list[dict[str, str]]:
    return make_documents()


@pytest.fixture(scope="session")
def tokenizer(corpus_docs: list[dict[str, str]]) -> TextTokenizer:
    return train_tokenizer((d["text"] for d in corpus_docs), vocab_size=400)


@pytest.fixture(scope="session")
def store_path(tmp_path_factory: pytest.TempPathFactory, corpus_docs, tokenizer) -> Path:
    """A store of the fixture corpus in several chunks (read-only for tests)."""
    out = tmp_path_factory.mktemp("store") / "store"
    tokenize_corpus(corpus_docs, tokenizer, out, val_fraction=0.1, min_val_docs=2, chunk_bytes=4000, progress=False)
    return out


@pytest.fixture(scope="session")
def store(store_path: Path) -> TokenStore:
    return TokenStore.open(store_path)
