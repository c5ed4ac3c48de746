"""A small EMO model trained briefly on the embedded corpus (all 7 domains), a subset of it, and
the `llama_cpp` fixture for the tests that run the exported files in llama.cpp itself.

The model is the `small` preset with the corpus's own 2048-token byte-level BPE, trained for a
few seconds: enough that its held-out loss is well below a uniform guess, so quantization and
tokenization differences show in the loss.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from emomoe.data.corpus import embedded_corpus
from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import train_tokenizer
from emomoe.select.keep import KeepSpec
from emomoe.select.subset import select_subset
from emomoe.train.config import RunConfig
from emomoe.train.trainer import train

REQUIRE_GGUF_ENV = "EMOMOE_REQUIRE_GGUF"
EVERY_NTH_DOCUMENT = 25
MAX_CHARS = 6000
VOCAB_SIZE = 2048


def corpus_sample() -> list[dict[str, str]]:
    """Every 25th document of the embedded corpus, cut to 6000 characters: all 7 domains."""
    docs = itertools.islice(embedded_corpus(), 0, None, EVERY_NTH_DOCUMENT)
    return [{**doc, "text": doc["text"][:MAX_CHARS]} for doc in docs]


@pytest.fixture(scope="session")
def corpus_store(tmp_path_factory) -> Path:
    docs = corpus_sample()
    tokenizer = train_tokenizer((d["text"] for d in docs), vocab_size=VOCAB_SIZE)
    out = tmp_path_factory.mktemp("corpus") / "store"
    tokenize_corpus(docs, tokenizer, out, val_fraction=0.1, progress=False)
    return out


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus_store) -> Path:
    """The `final` checkpoint of a short EMO run of the `small` preset on the corpus sample."""
    cfg = RunConfig.from_dict({
        "model": {"preset": "small", "vocab_size": VOCAB_SIZE, "max_seq_len": 128},
        "data": {"store": str(corpus_store), "seq_len": 128, "batch_size": 8},
        "train": {"max_steps": 80, "warmup_steps": 10, "lr": 4e-3, "log_every": 80, "eval_every": 0,
                  "num_eval_windows": 1, "tensorboard": False, "num_threads": 1, "seed": 0},
    })
    run = tmp_path_factory.mktemp("run") / "emo"
    train(cfg, run, progress=False)
    return run / "final"


@pytest.fixture(scope="session")
def subset(tmp_path_factory, trained) -> Path:
    """Half of every layer's routed experts (the same count in every layer, as llama.cpp needs)."""
    out = tmp_path_factory.mktemp("subset") / "half"
    select_subset(trained, out, keep=KeepSpec.parse("0.5"), method="random", seed=3)
    return out


@pytest.fixture(scope="session")
def llama_cpp():
    """The llama_cpp module (llama-cpp-python). Skipped where it is not installed, unless
    EMOMOE_REQUIRE_GGUF=1 (set by CI, where `make setup` installs the gguf extra): a failure then."""
    try:
        import llama_cpp
    except ImportError as e:
        if os.environ.get(REQUIRE_GGUF_ENV) == "1":
            pytest.fail(f"{REQUIRE_GGUF_ENV}=1 but llama-cpp-python is not importable: {e}")
        pytest.skip(f"llama-cpp-python is not installed ({REQUIRE_GGUF_ENV}=1 makes this a failure)")
    return llama_cpp
