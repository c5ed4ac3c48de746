"""Synthetic multi-domain corpora and token stores shared by the test folders.

Documents are random draws from a small vocabulary per domain, so each domain is easy to tell
apart and a 300-token BPE covers them.
"""

from __future__ import annotations

import random
from pathlib import Path

from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import train_tokenizer


def word_documents(
    words_by_domain: dict[str, list[str]], num_per_domain: int, *, num_words: tuple[int, int], seed: int = 0
) -> list[dict[str, str]]:
    """`num_per_domain` documents per domain, each `num_words` (min, max) words drawn at random."""
    rng = random.Random(seed)
    return [
        {
            "text": " ".join(rng.choice(words) for _ in range(rng.randint(*num_words))),
            "domain": domain,
            "source": f"synthetic:{domain}/{i}",
        }
        for domain, words in words_by_domain.items()
        for i in range(num_per_domain)
    ]


def build_store(docs: list[dict[str, str]], out: Path, *, vocab_size: int, **tokenize_options) -> Path:
    """Train a byte-level BPE on `docs` and write their token store to `out`."""
    tokenizer = train_tokenizer((d["text"] for d in docs), vocab_size=vocab_size)
    tokenize_corpus(docs, tokenizer, out, progress=False, **tokenize_options)
    return out


def save_tiny_checkpoint(out: Path, store: Path, *overrides: str, seed: int = 0) -> Path:
    """An untrained `tiny` model whose vocabulary and EOS are the store's, saved as a checkpoint."""
    import torch

    from emomoe.checkpoint import save_model
    from emomoe.data.store import TokenStore
    from emomoe.model import ModelConfig, build_model

    opened = TokenStore.open(store)
    cfg = ModelConfig.preset("tiny").with_overrides(
        [f"vocab_size={opened.vocab_size}", f"eos_id={opened.eos_id}", *overrides]
    )
    torch.manual_seed(seed)
    return save_model(out, build_model(cfg), cfg)
