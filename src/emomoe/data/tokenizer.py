"""Byte-level BPE tokenizers (HF `tokenizers`): train one, or load any `tokenizer.json`, with its EOS.

A tokenizer directory holds `tokenizer.json` and `emomoe_tokenizer.json` ({"eos_token", "eos_id"}).
EOS ends every document in a token store and separates documents in packed windows, so it must
be known: for a foreign `tokenizer.json` it is given explicitly, read from `emomoe_tokenizer.json`
or a HF `tokenizer_config.json` beside it, or detected among the special tokens by its usual names.

Special-token text inside a document ("<|endoftext|>" written in a code comment) is encoded as
plain text, never as the special id: only the pipeline places EOS tokens.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from emomoe.config import ranged
from emomoe.data.holdout import hash_below, text_hash
from emomoe.data.readers import Document, ReadConfig, reiterable
from emomoe.errors import DataError, warn
from emomoe.io import atomic_path

if TYPE_CHECKING:
    from emomoe.model.config import ModelConfig

EOS_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"
INFO_FILE = "emomoe_tokenizer.json"
HF_CONFIG_FILE = "tokenizer_config.json"
# Names EOS goes by in common tokenizers, most specific first.
EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "<|im_end|>")
_TEXTS_PER_TRAIN_BATCH = 256
VOCAB_SIZE = 8192
MIN_FREQUENCY = 2
_MB = 1 << 20


@dataclasses.dataclass
class TokenizerTrainConfig(ReadConfig):
    vocab_size: int = VOCAB_SIZE
    """Vocabulary size, EOS included (at least 257: the 256 bytes and EOS)."""
    min_frequency: int = ranged(MIN_FREQUENCY, ge=0)
    """Least count of a pair of tokens for a merge."""
    sample_mb: float = ranged(64.0, ge=0)
    """Train on about this many MB of text, a deterministic sample spread over the input; 0 means all."""

    @property
    def sample_bytes(self) -> int | None:
        """`sample_mb` as `sample_texts` takes it (None: all)."""
        return int(self.sample_mb * _MB) if self.sample_mb > 0 else None


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
    """A HF tokenizer plus its EOS token and a content hash that identifies it in token stores."""

    tokenizer: Tokenizer
    eos_id: int
    eos_token: str
    hash: str

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode many texts in parallel on all cores (the Rust side releases the GIL)."""
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def save(self, directory: str | Path) -> Path:
        """Write `tokenizer.json` + `emomoe_tokenizer.json` to `directory` atomically."""
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            self.write_files(tmp)
        return directory

    def write_files(self, directory: Path) -> None:
        """Create `directory` with the two files, non-atomically (for callers building in a temp dir)."""
        directory.mkdir(parents=True)
        (directory / TOKENIZER_FILE).write_text(self.tokenizer.to_str(), encoding="utf-8")
        info = {"eos_token": self.eos_token, "eos_id": self.eos_id, "hash": self.hash}
        (directory / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the canonical JSON of the tokenizer: equal for equal vocab, merges and settings."""
    canonical = json.dumps(json.loads(tokenizer.to_str()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _wrap(tokenizer: Tokenizer, eos_token: str, where: str) -> TextTokenizer:
    eos_id = tokenizer.token_to_id(eos_token)
    if eos_id is None:
        raise DataError(f"{where}: EOS token {eos_token!r} is not in the vocabulary")
    tokenizer.encode_special_tokens = True
    return TextTokenizer(tokenizer, eos_id, eos_token, tokenizer_hash(tokenizer))


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = VOCAB_SIZE,
    *,
    min_frequency: int = MIN_FREQUENCY,
    eos_token: str = EOS_TOKEN,
    show_progress: bool = False,
) -> TextTokenizer:
    """Train a byte-level BPE (all 256 bytes in the alphabet, so any text encodes) with EOS as id 0."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise DataError(f"vocab size {vocab_size} is too small: byte-level BPE needs at least {len(alphabet) + 1}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=alphabet,
        special_tokens=[eos_token],
        show_progress=show_progress,
    )
    seen = 0

    def batches() -> Iterator[list[str]]:
        nonlocal seen
        batch: list[str] = []
        for text in texts:
            batch.append(text)
            if len(batch) == _TEXTS_PER_TRAIN_BATCH:
                seen += len(batch)
                yield batch
                batch = []
        seen += len(batch)
        if batch:
            yield batch

    tokenizer.train_from_iterator(batches(), trainer=trainer)
    if seen == 0:
        raise DataError("no text to train the tokenizer on (the input holds no documents)")
    trained = _wrap(tokenizer, eos_token, "trained tokenizer")
    if trained.vocab_size < vocab_size:
        warn(
            f"the tokenizer has {trained.vocab_size:,} entries, not the {vocab_size:,} asked for: the text holds no "
            f"more merges seen at least {min_frequency} times (more text, or a lower --min-frequency, gives more)"
        )
    return trained


def sample_texts(
    documents: Iterable[Document] | Callable[[], Iterable[Document]], sample_bytes: int | None
) -> Iterator[str]:
    """About `sample_bytes` of text spread over the whole input (a hash sample; None: everything).

    Reads `documents` twice (to measure, then to sample): see `readers.reiterable`.
    """
    documents = reiterable(documents)
    threshold = None
    if sample_bytes is not None:
        total = sum(len(doc["text"].encode("utf-8")) for doc in documents)
        if sample_bytes < total:
            threshold = hash_below(sample_bytes / total)
    for doc in documents:
        if threshold is None or text_hash(doc["text"].encode("utf-8"), b"sample") < threshold:
            yield doc["text"]


def _tokenizer_file(path: Path) -> Path:
    file = path / TOKENIZER_FILE if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{path}: no tokenizer found (expected a {TOKENIZER_FILE} or a folder holding one)")
    return file


def _declared_eos(folder: Path) -> str | None:
    """EOS named by emomoe's own info file or by a HF tokenizer_config.json in `folder`."""
    for name in (INFO_FILE, HF_CONFIG_FILE):
        file = folder / name
        if not file.is_file():
            continue
        try:
            value = json.loads(file.read_text(encoding="utf-8")).get("eos_token")
        except (json.JSONDecodeError, AttributeError):
            raise DataError(f"{file}: not a valid JSON object") from None
        if isinstance(value, dict):  # HF writes AddedToken dicts in some versions
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return None


def load_tokenizer(path: str | Path, eos_token: str | int | None = None) -> TextTokenizer:
    """Load a tokenizer directory or a bare `tokenizer.json`; raise DataError if EOS is unknown.

    `eos_token` (a token or its id) overrides what the files declare.
    """
    file = _tokenizer_file(Path(path))
    try:
        tokenizer = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception for malformed files
        raise DataError(f"{file}: not a valid tokenizers JSON file ({e})") from None
    if isinstance(eos_token, int):
        eos_id, eos_token = eos_token, tokenizer.id_to_token(eos_token)
        if eos_token is None:
            raise DataError(f"{file}: EOS id {eos_id} is outside the vocabulary ({tokenizer.get_vocab_size()} tokens)")
    eos_token = eos_token or _declared_eos(file.parent)
    if eos_token is None:
        special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        eos_token = next((name for name in EOS_CANDIDATES if name in special), None)
    if eos_token is None:
        raise DataError(f"{file}: cannot tell which token is EOS; pass --eos-token (e.g. {EOS_TOKEN!r})")
    return _wrap(tokenizer, eos_token, str(file))


def load_model_tokenizer(file: Path, cfg: ModelConfig, *, any_tokenizer: bool = False) -> TextTokenizer:
    """Load the tokenizer and raise DataError unless the model can run its ids and it is the one the
    model was trained with (see `ModelConfig.check_tokenizer`)."""
    tok = load_tokenizer(file)
    cfg.check_tokenizer(tok.hash, file, given="the tokenizer given is", any_tokenizer=any_tokenizer)
    if tok.vocab_size > cfg.vocab_size:
        raise DataError(
            f"{file}: the tokenizer's vocabulary ({tok.vocab_size}) is larger than the model's ({cfg.vocab_size})"
        )
    if cfg.eos_id is not None and cfg.eos_id != tok.eos_id:
        raise DataError(f"{file}: EOS {tok.eos_token!r} is id {tok.eos_id}, but the model's eos_id is {cfg.eos_id}")
    return tok
