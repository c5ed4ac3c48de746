"""A tiny multi-domain token store and run configs small enough for 2 shared CPU cores."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import train_tokenizer
from emomoe.train.config import RunConfig

VOCAB_SIZE = 320
WORDS = {
    "prose": "the a river house walked quietly evening letter garden friend morning said".split(),
    "code": "def return if else for in range self import print None True x y".split(),
    "numbers": "0 1 2 3 4 5 6 7 8 9 + - = *".split(),
}


def synthetic_documents(num_per_domain: int = 40, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    docs = []
    for domain, words in WORDS.items():
        for i in range(num_per_domain):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(40, 120)))
            docs.append({"text": text, "domain": domain, "source": f"synthetic:{domain}/{i}"})
    return docs


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    docs = synthetic_documents()
    tokenizer = train_tokenizer((d["text"] for d in docs), vocab_size=VOCAB_SIZE)
    out = tmp_path_factory.mktemp("store") / "store"
    tokenize_corpus(docs, tokenizer, out, val_fraction=0.2, min_val_docs=2, progress=False)
    return out


def tiny_run_config(store: Path, *overrides: str) -> RunConfig:
    cfg = RunConfig.from_dict(
        {
            "model": {"preset": "tiny", "vocab_size": VOCAB_SIZE},
            "data": {"store": str(store), "seq_len": 32, "batch_size": 4},
            "train": {
                "max_steps": 6, "warmup_steps": 2, "log_every": 2, "eval_every": 3,
                "num_eval_windows": 3, "eval_batch_size": 4, "tensorboard": False, "num_threads": 1,
            },
        }
    )
    return cfg.with_overrides(list(overrides))


@pytest.fixture
def run_config(tiny_store):
    return lambda *overrides: tiny_run_config(tiny_store, *overrides)
