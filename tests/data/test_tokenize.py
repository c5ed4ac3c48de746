from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from emomoe.data.store import TokenStore
from emomoe.data.tokenize import encode_texts, partial_path, size_batches, split_points, tokenize_corpus
from emomoe.data.tokenizer import EOS_TOKEN, load_tokenizer
from emomoe.errors import ConfigError, DataError

OPTIONS = {"val_fraction": 0.1, "min_val_docs": 2, "chunk_bytes": 4000, "progress": False}


def _texts(store: TokenStore, tokenizer, split: str) -> Counter:
    return Counter((d, tokenizer.decode(t[:-1])) for d, t in store.documents(split))


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class Interrupted:
    """Re-iterable documents whose second pass (the encoding pass) stops at document `stop`."""

    def __init__(self, docs, stop: int):
        self.docs, self.stop, self.passes = docs, stop, 0

    def __iter__(self):
        self.passes += 1
        for i, doc in enumerate(self.docs):
            if self.passes == 2 and i == self.stop:
                raise KeyboardInterrupt
            yield doc


def test_round_trip_text_to_store(store: TokenStore, tokenizer, corpus_docs) -> None:
    stored = _texts(store, tokenizer, "train") + _texts(store, tokenizer, "val")
    assert stored == Counter((d["domain"], d["text"]) for d in corpus_docs)


def test_validation_documents_are_whole_disjoint_and_order_free(store: TokenStore, tokenizer, corpus_docs, tmp_path) -> None:
    train, val = _texts(store, tokenizer, "train"), _texts(store, tokenizer, "val")
    assert not set(train) & set(val)
    for domain in store.domains:
        assert sum(1 for d, _ in val if d == domain) >= 2
    shuffled = corpus_docs[:]
    random.Random(3).shuffle(shuffled)
    other = tokenize_corpus(shuffled, tokenizer, tmp_path / "shuffled", **OPTIONS)
    assert _texts(other, tokenizer, "val") == val


def test_two_builds_are_identical(store_path: Path, tokenizer, corpus_docs, tmp_path: Path) -> None:
    tokenize_corpus(lambda: iter(corpus_docs), tokenizer, tmp_path / "again", **OPTIONS)  # a function works too
    assert _files(tmp_path / "again") == _files(store_path)


def test_resume_keeps_completed_chunks_and_gives_the_same_store(store_path, tokenizer, corpus_docs, tmp_path) -> None:
    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(Interrupted(corpus_docs, len(corpus_docs) // 2), tokenizer, out, **OPTIONS)
    assert not out.exists()
    done = sorted(partial_path(out).glob("train/*.npy"))
    assert done, "some chunks should have completed before the interrupt"
    mtimes = {p.name: p.stat().st_mtime_ns for p in done}
    tokenize_corpus(corpus_docs, tokenizer, out, **OPTIONS)
    assert not partial_path(out).exists()
    assert _files(out) == _files(store_path)
    assert {name: (out / "train" / name).stat().st_mtime_ns for name in mtimes} == mtimes  # not redone


def test_partial_run_with_another_tokenizer_is_not_mixed_in(tokenizer, corpus_docs, tmp_path: Path) -> None:
    from emomoe.data.tokenizer import train_tokenizer

    out = tmp_path / "store"
    with pytest.raises(KeyboardInterrupt):
        tokenize_corpus(Interrupted(corpus_docs, len(corpus_docs) // 2), tokenizer, out, **OPTIONS)
    other = train_tokenizer((d["text"] for d in corpus_docs), vocab_size=350)
    with pytest.raises(DataError, match=r"\.store\.partial: an interrupted run with a different tokenizer_hash .*--force"):
        tokenize_corpus(corpus_docs, other, out, **OPTIONS)
    store = tokenize_corpus(corpus_docs, other, out, overwrite=True, **OPTIONS)
    store.check_tokenizer(other)


def test_existing_output_is_replaced_only_when_asked(store_path, tokenizer, corpus_docs, tmp_path: Path) -> None:
    out = tmp_path / "store"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="store: already exists"):
        tokenize_corpus(corpus_docs, tokenizer, out, **OPTIONS)
    with pytest.raises(DataError, match="store: is a folder emomoe did not write"):  # a user's folder, never replaced
        tokenize_corpus(corpus_docs, tokenizer, out, overwrite=True, **OPTIONS)
    assert (out / "keep.txt").read_text() == "mine"
    (out / "keep.txt").unlink()
    tokenize_corpus(corpus_docs, tokenizer, out, **OPTIONS)  # an empty folder holds nothing to lose
    (out / "keep.txt").write_text("added later")
    tokenize_corpus(corpus_docs, tokenizer, out, overwrite=True, **OPTIONS)
    assert (out / "keep.txt").read_text() == "added later"  # kept: not one of the store's files
    assert {k: v for k, v in _files(out).items() if k != "keep.txt"} == _files(store_path)


def test_empty_corpus_writes_nothing(tokenizer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no documents to tokenize"):
        tokenize_corpus([], tokenizer, tmp_path / "store", **OPTIONS)
    assert list(tmp_path.iterdir()) == []


def test_input_changing_between_passes_is_caught(tokenizer, corpus_docs, tmp_path: Path) -> None:
    class Changing:
        passes = 0

        def __iter__(self):
            self.passes += 1
            return iter(corpus_docs if self.passes == 1 else corpus_docs[1:])

    with pytest.raises(DataError, match="the input changed while it was being tokenized"):
        tokenize_corpus(Changing(), tokenizer, tmp_path / "store", **OPTIONS)
    assert list(tmp_path.iterdir()) == []


def test_bad_options(tokenizer, corpus_docs, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"val_fraction: expected a number in \[0, 1\), got 1.0"):
        tokenize_corpus(corpus_docs, tokenizer, tmp_path / "s", val_fraction=1.0)


def test_large_vocabularies_use_uint32(tmp_path: Path) -> None:
    vocab = {"[UNK]": 0, EOS_TOKEN: 1, **{f"w{i}": i for i in range(2, 70000)}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens([EOS_TOKEN])
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = load_tokenizer(tmp_path)
    docs = [{"text": f"w{i} w69999 w{i * 7}", "domain": "d", "source": ""} for i in range(2, 30)]
    store = tokenize_corpus(docs, tok, tmp_path / "store", min_val_docs=1, progress=False)
    assert store.metadata["dtype"] == "uint32"
    assert all(s.tokens.dtype == np.uint32 for s in store.shards("train"))
    stored = {tuple(t.tolist()) for _, t in store.documents("train")} | {tuple(t.tolist()) for _, t in store.documents("val")}
    assert stored == {(i, 69999, i * 7, 1) for i in range(2, 30)}


def test_long_documents_encode_in_pieces_to_the_same_ids(tokenizer, corpus_docs) -> None:
    text = "  ".join(d["text"] for d in corpus_docs) + " x" * 500  # double spaces too: cuts must avoid them
    whole = tokenizer.encode(text)
    for piece_chars in (50, 333, 4096):
        cuts = split_points(text, piece_chars)
        assert len(cuts) > 2 and all(b - a <= piece_chars for a, b in zip(cuts, cuts[1:]))
        (ids,) = encode_texts(tokenizer, [text], np.uint16, piece_chars=piece_chars)
        assert ids.tolist() == whole
    (ids,) = encode_texts(tokenizer, ["x" * 1000], np.uint16, piece_chars=64)  # no space to cut at
    assert tokenizer.decode(ids.tolist()) == "x" * 1000


def test_size_batches_cover_everything_in_order() -> None:
    assert size_batches([5, 5, 20, 1, 1, 1], 10) == [(0, 2), (2, 3), (3, 6)]
    assert size_batches([], 10) == []


def test_what_is_held_out_is_said(tokenizer, tmp_path: Path, capsys) -> None:
    docs = [{"text": f"a document about {i} things", "domain": "many", "source": "t"} for i in range(10)]
    docs.append({"text": "the only one", "domain": "single", "source": "t"})
    tokenize_corpus(docs, tokenizer, tmp_path / "s", val_fraction=0.02, min_val_docs=4, progress=False)
    err = capsys.readouterr().err
    assert "domain 'many': held out 4 of 10 documents for validation" in err
    assert "domain 'single': no validation documents (1 in all)" in err
