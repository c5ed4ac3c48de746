from __future__ import annotations

import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from emomoe.data.tokenizer import EOS_TOKEN, INFO_FILE, load_tokenizer, sample_texts, train_tokenizer
from emomoe.errors import DataError


def _word_level(tmp_path: Path, specials: list[str]) -> Path:
    """A foreign tokenizer.json (not made by emomoe) with the given special tokens."""
    vocab = {w: i for i, w in enumerate(["[UNK]", "hello", "world"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    return path


def test_round_trip_through_disk(tmp_path: Path, tokenizer, corpus_docs) -> None:
    tokenizer.save(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    assert (loaded.hash, loaded.eos_id, loaded.eos_token, loaded.vocab_size) == (
        tokenizer.hash, tokenizer.eos_id, EOS_TOKEN, tokenizer.vocab_size)
    assert json.loads((tmp_path / "tok" / INFO_FILE).read_text())["eos_id"] == tokenizer.eos_id
    for doc in corpus_docs[:8]:  # byte-level: German and Chinese text decode back exactly
        assert loaded.decode(loaded.encode(doc["text"])) == doc["text"]
    assert load_tokenizer(tmp_path / "tok" / "tokenizer.json").hash == tokenizer.hash


def test_unseen_characters_still_encode(tokenizer) -> None:
    text = "Ωμέγα 🙂 ž"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_token_text_is_plain_text(tokenizer) -> None:
    ids = tokenizer.encode("a <|endoftext|> b")
    assert tokenizer.eos_id not in ids
    assert tokenizer.decode(ids) == "a <|endoftext|> b"


def test_batch_encoding_matches_single(tokenizer, corpus_docs) -> None:
    texts = [d["text"] for d in corpus_docs[:10]]
    assert tokenizer.encode_batch(texts) == [tokenizer.encode(t) for t in texts]


def test_hash_identifies_content(corpus_docs) -> None:
    texts = [d["text"] for d in corpus_docs]
    a = train_tokenizer(texts, vocab_size=300)
    assert train_tokenizer(texts, vocab_size=300).hash == a.hash
    assert train_tokenizer(texts, vocab_size=320).hash != a.hash


def test_eos_detected_from_special_tokens(tmp_path: Path) -> None:
    tok = load_tokenizer(_word_level(tmp_path, ["<pad>", "</s>"]))
    assert tok.eos_token == "</s>"
    assert tok.eos_id == 4


def test_eos_from_hf_config_or_argument(tmp_path: Path) -> None:
    path = _word_level(tmp_path, ["<end>", "<other>"])
    assert load_tokenizer(path, eos_token="<other>").eos_id == 4
    assert load_tokenizer(path, eos_token=3).eos_token == "<end>"
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<end>"}}))
    assert load_tokenizer(tmp_path).eos_token == "<end>"


def test_unknown_eos_is_a_clear_error(tmp_path: Path) -> None:
    path = _word_level(tmp_path, ["<pad>"])
    with pytest.raises(DataError, match=r"tokenizer\.json: cannot tell which token is EOS; pass --eos-token"):
        load_tokenizer(path)
    with pytest.raises(DataError, match=r"EOS token '<nope>' is not in the vocabulary"):
        load_tokenizer(path, eos_token="<nope>")


def test_missing_or_broken_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no tokenizer found"):
        load_tokenizer(tmp_path / "absent")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match=r"tokenizer\.json: not a valid tokenizers JSON file"):
        load_tokenizer(tmp_path)


def test_training_needs_text_and_a_real_vocab() -> None:
    with pytest.raises(DataError, match="vocab size 100 is too small"):
        train_tokenizer(["text"], vocab_size=100)
    with pytest.raises(DataError, match="no text to train the tokenizer on"):
        train_tokenizer([], vocab_size=300)


def test_sample_spreads_over_the_input_deterministically(make_documents) -> None:
    docs = make_documents(num_per_domain=60)
    total = sum(len(d["text"].encode()) for d in docs)
    assert list(sample_texts(docs, None)) == [d["text"] for d in docs]
    assert list(sample_texts(docs, total * 2)) == [d["text"] for d in docs]
    sample = list(sample_texts(docs, total // 3))
    assert sample == list(sample_texts(docs, total // 3))
    assert 0.2 * total < sum(len(t.encode()) for t in sample) < 0.5 * total
    domains = {d["domain"] for d in docs if d["text"] in set(sample)}
    assert domains == {d["domain"] for d in docs}  # not just the first part of the input


def test_a_smaller_vocabulary_than_asked_is_said(capsys) -> None:
    tok = train_tokenizer(["a tiny text, a tiny text"] * 3, vocab_size=70000)
    assert f"the tokenizer has {tok.vocab_size:,} entries, not the 70,000 asked for" in capsys.readouterr().err


def test_load_model_tokenizer_refuses_ids_the_model_cannot_run(tmp_path: Path, tokenizer) -> None:
    from emomoe.data.tokenizer import load_model_tokenizer
    from emomoe.model import ModelConfig

    tokenizer.save(tmp_path / "tok")
    file = tmp_path / "tok" / "tokenizer.json"
    fits = ModelConfig.preset("tiny").with_overrides([f"vocab_size={tokenizer.vocab_size}", f"eos_id={tokenizer.eos_id}"])
    assert load_model_tokenizer(file, fits).hash == tokenizer.hash
    with pytest.raises(DataError, match=rf"vocabulary \({tokenizer.vocab_size}\) is larger than the model's"):
        load_model_tokenizer(file, fits.with_overrides([f"vocab_size={tokenizer.vocab_size - 1}"]))
    other_eos = (tokenizer.eos_id + 1) % tokenizer.vocab_size
    with pytest.raises(DataError, match=rf"is id {tokenizer.eos_id}, but the model's eos_id is {other_eos}"):
        load_model_tokenizer(file, fits.with_overrides([f"eos_id={other_eos}"]))
