"""Synthetic multi-domain corpora and token stores shared by the test folders.

Documents are random draws from a small vocabulary per domain, so each domain is easy to tell
apart and a 300-token BPE covers them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import subprocess
from collections.abc import Iterator
from pathlib import Path

from emomoe.data.tokenize import tokenize_corpus
from emomoe.data.tokenizer import train_tokenizer
from emomoe.model import ModelConfig


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


THREE_DOMAINS = {
    "code": "def return self import class for in if else while yield lambda None x y z = ( ) :".split(),
    "legal": "licensee shall grant warranty permission notice copyright software liability hereby".split(),
    "math": "theorem proof lemma integral sum prime group ring field 0 1 2 3 + = < >".split(),
}
"""Word lists of three easily told apart domains."""


def three_domain_store(out: Path) -> Path:
    """24 documents of 30-90 words per domain of THREE_DOMAINS, a fifth held out, 300-token BPE."""
    docs = word_documents(THREE_DOMAINS, 24, num_words=(30, 90))
    return build_store(docs, out, vocab_size=300, val_fraction=0.2)


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


def sharded_checkpoint(run_dir: Path, model, cfg: ModelConfig, step: int = 1, num_kept: int = 2) -> Path:
    """RUN_DIR/checkpoints/step-N as an FSDP run writes it, from one process (one rank file): the
    weights of `model`, fresh AdamW moments, and a trainer state with no ranks."""
    from emomoe.train.checkpointing import CheckpointManager
    from emomoe.train.config import TrainConfig
    from emomoe.train.optim import build_optimizer

    state = {"step": step, "tokens_seen": 64 * step, "world_size": 1, "scheduler": {}, "ranks": []}
    optimizer = build_optimizer(model, TrainConfig())
    return CheckpointManager(run_dir, num_kept).save_sharded(step, model, optimizer, cfg, state)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "256k") -> Iterator[bool]:
    """Mount a tmpfs of `size` at `path` (root only, where the platform allows); yields whether it did."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    ).returncode == 0
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=True)


def fill_disk(directory: Path, leave_bytes: int = 0) -> Path:
    """Write a ballast file into `directory` until its file system is full, then free `leave_bytes`."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)
    os.truncate(ballast, max(0, ballast.stat().st_size - leave_bytes))
    return ballast


def disk_full_error() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def damage(path: Path, how: str) -> Path:
    """Flip one bit in the middle of a file ("flip") or cut it in half ("truncate")."""
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x10
    elif how == "truncate":
        del data[len(data) // 2 :]
    else:
        raise ValueError(how)
    path.write_bytes(bytes(data))
    return path


def tiny_config(num_layers: int = 2, pool: str = "2..8") -> ModelConfig:
    cfg = ModelConfig.preset("tiny").with_overrides([f"num_layers={num_layers}", f"moe.router.pool={pool}"])
    return cfg


FUZZ_EXAMPLES = 40
"""Examples per fuzzed reader: enough to hit truncations, flips and garbage in every part of a small
file, few enough that the whole pass takes seconds in `make test`."""


def fuzz_settings(examples: int = FUZZ_EXAMPLES):
    """Hypothesis settings of the reader fuzz tests: bounded, no deadline (file IO), and a
    function-scoped tmp_path reused by every example (each example rewrites the files it reads)."""
    from hypothesis import HealthCheck, settings

    return settings(max_examples=examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def damaged(valid: bytes):
    """A hypothesis strategy of damaged versions of the valid file `valid`: truncated, with bits
    flipped, with random bytes spliced in, or random bytes altogether."""
    from hypothesis import strategies as st

    n = len(valid)

    def flip(flips: list[tuple[int, int]]) -> bytes:
        data = bytearray(valid)
        for position, bit in flips:
            data[position] ^= 1 << bit
        return bytes(data)

    return st.one_of(
        st.integers(0, max(n - 1, 0)).map(lambda k: valid[:k]),
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, 7)), min_size=1, max_size=4).map(flip),
        st.tuples(st.integers(0, n), st.binary(min_size=1, max_size=64)).map(lambda a: valid[: a[0]] + a[1] + valid[a[0]:]),
        st.binary(max_size=256),
    )


def only_our_errors(read, *args, **kwargs):
    """Run a reader on damaged input: it may succeed or raise one of emomoe's errors, nothing else
    (a traceback of KeyError, UnicodeDecodeError, a safetensors or numpy error is a bug)."""
    from emomoe.errors import EmomoeError

    try:
        return read(*args, **kwargs)
    except EmomoeError:
        return None
