"""A tiny multi-domain token store and run configs small enough for 2 shared CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from emomoe.train.config import RunConfig
from tests.fixtures import build_store, word_documents

VOCAB_SIZE = 320
WORDS = {
    "prose": "the a river house walked quietly evening letter garden friend morning said".split(),
    "code": "def return if else for in range self import print None True x y".split(),
    "numbers": "0 1 2 3 4 5 6 7 8 9 + - = *".split(),
}


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory) -> Path:
    docs = word_documents(WORDS, 40, num_words=(40, 120))
    out = tmp_path_factory.mktemp("store") / "store"
    return build_store(docs, out, vocab_size=VOCAB_SIZE, val_fraction=0.2, min_val_docs=2)


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
