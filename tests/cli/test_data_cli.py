from __future__ import annotations

import json
from pathlib import Path

import pytest

from emomoe.cli import main
from emomoe.data.loader import DataConfig, TrainLoader
from emomoe.data.store import TokenStore
from emomoe.data.tokenizer import load_tokenizer

_TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog while the cat sleeps in the sun.",
    "german": "Der schnelle braune Fuchs springt über den faulen Hund, während die Katze schläft.",
    "chinese": "敏捷的棕色狐狸跳过了懒狗，猫在阳光下睡觉。",
}


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A jsonl corpus and a .txt folder, a few kB in three domains."""
    path = tmp_path / "corpus.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(12):
            for domain, text in _TEXTS.items():
                f.write(json.dumps({"body": f"{i} {text * (1 + i % 3)}", "lang": domain}, ensure_ascii=False) + "\n")
    folder = tmp_path / "txt" / "notes"
    folder.mkdir(parents=True)
    for i in range(6):
        (folder / f"{i}.txt").write_text(f"note {i}: remember the milk and the eggs " * (i + 1))
    return tmp_path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tokenizer_train_then_tokenize(corpus: Path, capsys) -> None:
    inputs = ["--input", corpus / "corpus.jsonl", corpus / "txt", "--text-field", "body", "--domain-field", "lang"]
    code, out, _ = _run(capsys, "tokenizer", "train", *inputs, "--vocab-size", 320, "--out", corpus / "tok")
    assert code == 0 and "vocab 320" in out
    code, out, _ = _run(capsys, "tokenize", *inputs, "--tokenizer", corpus / "tok", "--out", corpus / "store",
                        "--no-progress", "--min-val-docs", 2)
    assert code == 0
    store = TokenStore.open(corpus / "store")
    assert store.domains == ["chinese", "english", "german", "notes"]
    assert all(name in out for name in store.domains)
    store.check_tokenizer(load_tokenizer(corpus / "tok"))
    assert store.metadata["source"]["text_field"] == "body"
    batch = next(TrainLoader(store, DataConfig(store=str(corpus / "store"), seq_len=32, batch_size=2)))
    assert batch["input_ids_BS"].shape == (2, 32)


def _tokenizer(corpus: Path, capsys) -> Path:
    code, _, _ = _run(capsys, "tokenizer", "train", "--input", corpus / "txt", "--vocab-size", 300, "--out", corpus / "tok")
    assert code == 0
    return corpus / "tok"


def test_missing_text_field_is_one_line_and_writes_nothing(corpus: Path, capsys) -> None:
    tok = _tokenizer(corpus, capsys)
    code, _, err = _run(capsys, "tokenize", "--input", corpus / "corpus.jsonl", "--tokenizer", tok, "--out", corpus / "store")
    assert code == 2
    assert err.strip().count("\n") == 0
    assert "corpus.jsonl:1: no text field 'text' (fields: body, lang)" in err
    assert not (corpus / "store").exists() and not (corpus / ".store.partial").exists()


def test_existing_output_needs_force(corpus: Path, capsys) -> None:
    tok = _tokenizer(corpus, capsys)
    code, _, err = _run(capsys, "tokenizer", "train", "--input", corpus / "txt", "--out", tok)
    assert code == 2 and "tok: already exists (pass --force" in err
    args = ["tokenize", "--input", corpus / "txt", "--tokenizer", tok, "--out", corpus / "store", "--no-progress"]
    assert _run(capsys, *args)[0] == 0
    code, _, err = _run(capsys, *args)
    assert code == 2 and "store: already exists" in err
    assert _run(capsys, *args, "--force")[0] == 0


def test_invalid_utf8_policies(corpus: Path, capsys) -> None:
    tok = _tokenizer(corpus, capsys)
    (corpus / "txt" / "notes" / "latin1.txt").write_bytes(b"caf\xe9 au lait")
    base = ["tokenize", "--input", corpus / "txt", "--tokenizer", tok, "--no-progress"]
    code, _, err = _run(capsys, *base, "--out", corpus / "strict", "--invalid-text", "error")
    assert code == 2 and "latin1.txt: text is not valid UTF-8" in err
    assert _run(capsys, *base, "--out", corpus / "skipped")[0] == 0
    assert TokenStore.open(corpus / "skipped").metadata["source"]["num_invalid_utf8"] == 1


def test_unknown_eos_and_missing_tokenizer(corpus: Path, capsys) -> None:
    code, _, err = _run(capsys, "tokenize", "--input", corpus / "txt", "--tokenizer", corpus / "nope", "--out", corpus / "s")
    assert code == 2 and "nope: no tokenizer found" in err
