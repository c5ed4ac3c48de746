"""The shipped demo corpus: complete, clean, and described exactly by its manifest."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest
import zstandard

from emomoe.data import corpus
from emomoe.errors import ConfigError, DataError

MB = 1_000_000
_BAD_CHARS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff]")


@pytest.fixture(scope="module")
def records() -> list[dict[str, str]]:
    return list(corpus.embedded_corpus())


@pytest.fixture(scope="module")
def manifest() -> dict:
    return corpus.embedded_manifest()


def test_every_domain_is_present_and_4_to_8_mb(records, manifest):
    num_bytes = Counter()
    for r in records:
        num_bytes[r["domain"]] += len(r["text"].encode("utf-8"))
    assert set(num_bytes) == set(corpus.DOMAINS)
    assert list(manifest["domains"]) == list(corpus.DOMAINS)
    for domain in corpus.DOMAINS:
        assert 4 * MB <= num_bytes[domain] <= 8 * MB, domain


def test_counts_match_the_manifest(records, manifest):
    for domain in corpus.DOMAINS:
        docs = [r["text"] for r in records if r["domain"] == domain]
        entry = manifest["domains"][domain]
        assert entry["num_documents"] == len(docs)
        assert entry["num_chars"] == sum(len(t) for t in docs)
        assert entry["num_bytes"] == sum(len(t.encode("utf-8")) for t in docs)
        assert sum(s["num_documents"] for s in entry["sources"].values()) == len(docs)
    assert manifest["num_documents"] == len(records)


def test_file_hashes_match_the_manifest(manifest):
    compressed = corpus.embedded_corpus_path().read_bytes()
    assert len(compressed) <= 15 * MB
    assert hashlib.sha256(compressed).hexdigest() == manifest["sha256_compressed"]
    jsonl = zstandard.ZstdDecompressor().decompress(compressed)
    assert hashlib.sha256(jsonl).hexdigest() == manifest["sha256_jsonl"]


def test_documents_are_clean(records):
    for r in records:
        text = r["text"]
        assert text.strip(), r["source"]
        assert len(text) <= corpus.MAX_DOC_CHARS, r["source"]
        assert unicodedata.is_normalized("NFC", text), r["source"]
        assert not _BAD_CHARS.search(text), r["source"]
        assert text == text.strip("\n") and "\n\n\n\n" not in text, r["source"]


def test_documents_are_unique_and_sourced(records, manifest):
    hashes = [hashlib.sha256(r["text"].encode("utf-8")).hexdigest() for r in records]
    assert len(set(hashes)) == len(hashes)
    packages = set(manifest["packages"])
    for r in records:
        assert r["source"].split(":", 1)[0] in packages, r["source"]
    assert len({r["source"] for r in records}) == len(records)


def test_manifest_pins_every_package_and_licenses_names_it(manifest):
    licenses = (corpus.embedded_corpus_path().parent / "LICENSES.md").read_text(encoding="utf-8")
    for name, entry in manifest["packages"].items():
        assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"]), name
        assert entry["version"] and entry["license"], name
        assert f"`{name}`" in licenses, name
    used = {p for d in manifest["domains"].values() for s in d["sources"].values() for p in s["packages"]}
    assert used <= set(manifest["packages"])


def test_domain_filter_streams_only_those_domains(records):
    wanted = ["math", "german"]
    filtered = list(corpus.embedded_corpus(domains=wanted))
    assert {r["domain"] for r in filtered} == set(wanted)
    assert filtered == [r for r in records if r["domain"] in wanted]


def test_unknown_domain_is_a_config_error():
    with pytest.raises(ConfigError, match="klingon"):
        next(corpus.embedded_corpus(domains=["code", "klingon"]))


def _write_zst(path: Path, lines: list[str]) -> None:
    path.write_bytes(zstandard.ZstdCompressor().compress("".join(lines).encode("utf-8")))


def test_malformed_line_names_file_and_line(tmp_path, monkeypatch):
    path = tmp_path / "corpus.jsonl.zst"
    good = json.dumps({"text": "a", "domain": "code", "source": "x"}) + "\n"
    _write_zst(path, [good, "{not json\n"])
    monkeypatch.setattr(corpus, "embedded_corpus_path", lambda: path)
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}:2: not a JSON object"):
        list(corpus.embedded_corpus())


def test_missing_field_names_file_and_line(tmp_path, monkeypatch):
    path = tmp_path / "corpus.jsonl.zst"
    _write_zst(path, [json.dumps({"text": "a", "domain": "code"}) + "\n"])
    monkeypatch.setattr(corpus, "embedded_corpus_path", lambda: path)
    with pytest.raises(DataError, match=r":1: expected string fields"):
        list(corpus.embedded_corpus())


def test_missing_or_truncated_file_is_a_data_error(tmp_path, monkeypatch):
    path = tmp_path / "corpus.jsonl.zst"
    monkeypatch.setattr(corpus, "embedded_corpus_path", lambda: path)
    with pytest.raises(DataError, match="missing"):
        list(corpus.embedded_corpus())
    line = json.dumps({"text": "b" * 5000, "domain": "code", "source": "x"}) + "\n"
    data = zstandard.ZstdCompressor(write_checksum=True).compress((line * 50).encode("utf-8"))
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=re.escape(str(path))):
        list(corpus.embedded_corpus())


def test_reading_streams_without_decompressing_everything(monkeypatch):
    # The first document must arrive before the whole file is decompressed into memory.
    real = zstandard.ZstdDecompressor.decompress
    monkeypatch.setattr(zstandard.ZstdDecompressor, "decompress", lambda *a, **k: pytest.fail("not streaming"))
    first = next(corpus.embedded_corpus())
    monkeypatch.setattr(zstandard.ZstdDecompressor, "decompress", real)
    assert first["domain"] == corpus.DOMAINS[0]
