from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given

from emomoe.data.readers import DocumentSource, InvalidText, reiterable
from emomoe.errors import DataError
from tests.fixtures import damaged, fuzz_settings, only_our_errors


def _pairs(docs) -> list[tuple[str, str]]:
    return [(d["text"], d["domain"]) for d in docs]


@pytest.fixture
def docs(make_documents):
    return make_documents(num_per_domain=3)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst"])
def test_jsonl_formats_read_back_every_document(tmp_path: Path, write_jsonl, docs, suffix: str) -> None:
    plain = write_jsonl(tmp_path / "plain.jsonl", docs).read_bytes()
    path = tmp_path / f"corpus{suffix}"
    if suffix == ".jsonl.gz":
        path.write_bytes(gzip.compress(plain))
    elif suffix == ".jsonl.zst":
        half = plain.index(b"\n", len(plain) // 2) + 1  # two frames, as concatenated zstd files are
        cctx = zstandard.ZstdCompressor()
        path.write_bytes(cctx.compress(plain[:half]) + cctx.compress(plain[half:]))
    else:
        path.write_bytes(plain)
    got = list(DocumentSource([path]))
    assert _pairs(got) == _pairs(docs)
    assert {d["source"] for d in got} == {str(path)}


def test_source_is_reiterable_and_counts(tmp_path: Path, write_jsonl, docs) -> None:
    source = DocumentSource([write_jsonl(tmp_path / "a.jsonl", docs)])
    assert _pairs(source) == _pairs(source) == _pairs(docs)
    assert source.stats.num_documents == len(docs)


def test_reading_streams_one_record_at_a_time(tmp_path: Path, write_jsonl, docs) -> None:
    path = write_jsonl(tmp_path / "a.jsonl", docs[:2])
    with open(path, "a") as f:
        f.write("{broken\n")
    stream = iter(DocumentSource([path]))
    assert next(stream)["text"] == docs[0]["text"]  # nothing past line 1 was parsed yet
    next(stream)
    with pytest.raises(DataError, match=r"a\.jsonl:3: not valid JSON"):
        next(stream)


def test_custom_fields_and_fixed_domain(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"body": "hello", "topic": "greetings"}) + "\n")
    assert _pairs(DocumentSource([path], text_field="body", domain_field="topic")) == [("hello", "greetings")]
    assert _pairs(DocumentSource([path], text_field="body", domain="fixed")) == [("hello", "fixed")]


def test_parquet_with_custom_columns(tmp_path: Path, docs) -> None:
    path = tmp_path / "c.parquet"
    table = pa.table({"content": [d["text"] for d in docs], "lang": [d["domain"] for d in docs], "id": list(range(len(docs)))})
    pq.write_table(table, path, row_group_size=5)
    got = DocumentSource([path], text_field="content", domain_field="lang")
    assert _pairs(got) == _pairs(docs)


def test_parquet_missing_column_names_file_and_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["x"], "domain": ["d"]}), path)
    with pytest.raises(DataError, match=r"c\.parquet: no text column 'text' \(columns: body, domain\)"):
        list(DocumentSource([path]))


def test_txt_folder_domains_from_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    (root / "legal").mkdir(parents=True)
    (root / "german" / "deep").mkdir(parents=True)
    (root / "legal" / "gpl.txt").write_text("GPL text")
    (root / "german" / "deep" / "a.txt").write_bytes("\ufeffGrüße".encode())
    (root / "top.txt").write_text("at the root")
    (root / "notes.md").write_text("ignored: not a supported format")
    got = sorted(_pairs(DocumentSource([root])))
    assert got == [("GPL text", "legal"), ("Grüße", "german"), ("at the root", "corpus")]
    assert {d["domain"] for d in DocumentSource([root], domain="all")} == {"all"}
    assert _pairs(DocumentSource([root / "legal" / "gpl.txt"])) == [("GPL text", "legal")]


def test_hf_dataset_saved_to_disk(tmp_path: Path, docs) -> None:
    datasets = pytest.importorskip("datasets")
    train = datasets.Dataset.from_dict({"text": [d["text"] for d in docs[:5]], "domain": [d["domain"] for d in docs[:5]]})
    test = datasets.Dataset.from_dict({"text": [d["text"] for d in docs[5:]], "domain": [d["domain"] for d in docs[5:]]})
    train.save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "dict"))
    assert _pairs(DocumentSource([tmp_path / "single"])) == _pairs(docs[:5])
    assert _pairs(DocumentSource([tmp_path / "dict"])) == _pairs(docs)


def test_empty_documents_are_skipped_counted_and_logged(tmp_path: Path, caplog) -> None:
    path = tmp_path / "a.jsonl"
    lines = [{"text": "", "domain": "d"}, {"text": "kept", "domain": "d"}, {"text": " \n\t", "domain": "d"}, {"text": None, "domain": "d"}]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "\n")
    source = DocumentSource([path])
    with caplog.at_level(logging.WARNING):
        assert _pairs(source) == [("kept", "d")]
        list(source)
    assert source.stats.num_empty == 3
    assert source.stats.first_empty == f"{path}:1"
    warnings = [r for r in caplog.records if "empty" in r.getMessage()]
    assert len(warnings) == 1  # once per source, not once per pass


def _invalid_inputs(tmp_path: Path) -> tuple[Path, Path]:
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"text": "ok", "domain": "d"}\n{"text": "caf\xe9 latin-1", "domain": "d"}\n'
                      b'{"text": "escaped \\udc80 surrogate", "domain": "d"}\n')
    folder = tmp_path / "txt" / "d"
    folder.mkdir(parents=True)
    (folder / "bad.txt").write_bytes(b"caf\xe9")
    return jsonl, folder.parent


def test_invalid_utf8_skip_is_the_default(tmp_path: Path) -> None:
    jsonl, txt = _invalid_inputs(tmp_path)
    source = DocumentSource([jsonl, txt])
    assert _pairs(source) == [("ok", "d")]
    assert source.stats.num_invalid_utf8 == 3
    assert source.stats.first_invalid_utf8 == f"{jsonl}:2"


def test_invalid_utf8_replace_keeps_documents(tmp_path: Path) -> None:
    jsonl, txt = _invalid_inputs(tmp_path)
    texts = [d["text"] for d in DocumentSource([jsonl, txt], invalid_text=InvalidText.REPLACE)]
    assert texts == ["ok", "caf\ufffd latin-1", "escaped \ufffd surrogate", "caf\ufffd"]
    for text in texts:
        text.encode("utf-8")


def test_invalid_utf8_error_names_the_file(tmp_path: Path) -> None:
    jsonl, _ = _invalid_inputs(tmp_path)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: text is not valid UTF-8"):
        list(DocumentSource([jsonl], invalid_text="error"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"body": "x", "domain": "d"}\n', r"a\.jsonl:1: no text field 'text' \(fields: body, domain\)"),
        ('{"text": "x"}\n', r"a\.jsonl:1: no domain field 'domain' \(pass --domain"),
        ('{"text": 3, "domain": "d"}\n', r"a\.jsonl:1: text field 'text' holds int"),
        ('["x"]\n', r"a\.jsonl:1: expected a JSON object per line, got list"),
        ('{"text": "x", "domain": "d"}\n{"text": \n', r"a\.jsonl:2: not valid JSON"),
    ],
)
def test_malformed_records_name_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        list(DocumentSource([path]))


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst"])
def test_truncated_archives_raise(tmp_path: Path, write_jsonl, docs, suffix: str) -> None:
    plain = write_jsonl(tmp_path / "plain.jsonl", docs * 20).read_bytes()
    packed = gzip.compress(plain) if suffix.endswith("gz") else zstandard.ZstdCompressor().compress(plain)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=rf"cut\{suffix}: .*truncated"):
        list(DocumentSource([path]))


def test_empty_corpus_raises(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text('{"text": "", "domain": "d"}\n')
    with pytest.raises(DataError, match=r"empty\.jsonl: no documents to read \(skipped 1 empty"):
        list(DocumentSource([path]))


def test_bad_paths_raise(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="missing.jsonl: input not found"):
        DocumentSource([tmp_path / "missing.jsonl"])
    with pytest.raises(DataError, match=r"x\.csv: unsupported input format"):
        DocumentSource([tmp_path / "x.csv"])
    with pytest.raises(DataError, match="nothing: folder holds no readable files"):
        DocumentSource([tmp_path / "nothing"])


def test_reiterable_accepts_collections_and_functions_but_not_one_shot_iterators(docs) -> None:
    assert list(reiterable(docs)) == docs
    twice = reiterable(lambda: iter(docs))
    assert list(twice) == list(twice) == docs
    with pytest.raises(TypeError, match="documents are read twice"):
        reiterable(iter(docs))


def _fuzz_seed(suffix: str) -> bytes:
    """A valid small corpus file of each input format."""
    docs = [{"text": f"document {i}: héllo wörld " * 3, "domain": ["code", "law"][i % 2]} for i in range(6)]
    plain = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs).encode()
    if suffix == ".jsonl.gz":
        return gzip.compress(plain)
    if suffix == ".jsonl.zst":
        return zstandard.ZstdCompressor().compress(plain)
    if suffix == ".txt":
        return docs[0]["text"].encode()
    if suffix == ".parquet":
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({"text": [d["text"] for d in docs], "domain": [d["domain"] for d in docs]}), sink)
        return sink.getvalue().to_pybytes()
    return plain


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".jsonl.zst", ".txt", ".parquet"])
def test_fuzz_damaged_input_files_raise_only_our_errors(tmp_path, suffix):
    path = tmp_path / "code" / f"corpus{suffix}"
    path.parent.mkdir()

    @fuzz_settings()
    @given(damaged(_fuzz_seed(suffix)))
    def read(data):
        path.write_bytes(data)
        only_our_errors(lambda: list(DocumentSource([tmp_path])))
        only_our_errors(lambda: list(DocumentSource([path], invalid_text=InvalidText.ERROR)))

    read()
