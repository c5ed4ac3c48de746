"""A store of chosen documents of another store (`data.documents`)."""

from pathlib import Path

import pytest

from emomoe.data.documents import write_documents_store
from emomoe.data.loader import DataConfig, TrainLoader
from emomoe.data.store import Split, TokenStore
from emomoe.data.tokenizer import load_tokenizer
from emomoe.errors import DataError


def test_the_chosen_documents_in_the_order_given_and_nothing_else(store: TokenStore, corpus_docs, tmp_path: Path):
    numbers = [5, 0, 3]
    made = write_documents_store(store, Split.TRAIN, "german", numbers, tmp_path / "three")
    # The reference: the fixture's German texts that the source store put in its train split, re-encoded.
    val_texts = {tuple(t) for _, t in store.documents(Split.VAL, ["german"])}
    tok = load_tokenizer(store.tokenizer_path)
    encoded = [tok.encode(d["text"]) + [tok.eos_id] for d in corpus_docs if d["domain"] == "german"]
    train_docs = [tuple(ids) for ids in encoded if tuple(ids) not in val_texts]
    assert [tuple(t) for _, t in made.documents(Split.TRAIN)] == [train_docs[n] for n in numbers]
    assert {d for d, _ in made.documents(Split.TRAIN)} == {"german"}
    assert made.num_tokens(Split.VAL) == 0 and made.domains == store.domains
    assert (made.vocab_size, made.eos_id, made.tokenizer_hash) == (store.vocab_size, store.eos_id, store.tokenizer_hash)
    assert load_tokenizer(made.tokenizer_path).hash == store.tokenizer_hash
    assert made.metadata["documents_of"] == {"store": str(store.path), "split": "train", "domain": "german",
                                             "numbers": numbers}
    # The training loader reads nothing but those tokens.
    loader = TrainLoader(made, DataConfig(seq_len=8, batch_size=2))
    num_tokens = sum(len(train_docs[n]) for n in numbers)
    assert loader.num_windows == (num_tokens - 1) // 8


@pytest.mark.parametrize("numbers", [[], [0, 0], [-1], [10_000]])
def test_bad_document_numbers_write_nothing(store: TokenStore, tmp_path: Path, numbers):
    with pytest.raises(DataError, match=r"expected distinct document numbers in \[0, \d+\) of 'german' \(train\)"):
        write_documents_store(store, Split.TRAIN, "german", numbers, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_an_existing_store_is_replaced_only_with_force(store: TokenStore, tmp_path: Path):
    write_documents_store(store, Split.TRAIN, "code", [0], tmp_path / "one")
    with pytest.raises(DataError, match="exists"):
        write_documents_store(store, Split.TRAIN, "code", [1], tmp_path / "one")
    again = write_documents_store(store, Split.TRAIN, "code", [1], tmp_path / "one", force=True)
    assert again.metadata["documents_of"]["numbers"] == [1]
